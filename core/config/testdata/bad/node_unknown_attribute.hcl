launcher "local" {}

node "n1" {
  launcher = "local"
  colour   = "blue"
}

job "j" {
  step "s" { run = "true" }
}
