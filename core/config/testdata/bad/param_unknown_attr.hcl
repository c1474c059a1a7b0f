launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  param "TARGET" {
    values = ["a"]
  }
  step "s" { run = "true" }
}
