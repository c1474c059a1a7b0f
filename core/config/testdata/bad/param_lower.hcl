launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  param "name" {}
  step "s" { run = "true" }
}
