launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  timeout = "soon"
  step "s" { run = "true" }
}
