launcher "local" {}

node "n1" {
  launcher = "local"
  availability {
    mode = "sometimes"
  }
}

job "j" {
  step "s" { run = "true" }
}
