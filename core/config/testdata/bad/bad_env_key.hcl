launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  env = { "A=B" = "x" }
  step "s" { run = "true" }
}
