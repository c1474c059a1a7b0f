launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  timeout = "-5m"
  step "s" { run = "true" }
}
