launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  param "PATH" {}
  step "s" { run = "true" }
}
