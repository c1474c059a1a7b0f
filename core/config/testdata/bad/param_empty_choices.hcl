launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  param "TARGET" {
    choices = []
  }
  step "s" { run = "true" }
}
