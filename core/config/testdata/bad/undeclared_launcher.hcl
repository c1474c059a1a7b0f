launcher "local" {}

node "n1" {
  launcher = "kafka"
}

job "j" {
  step "s" { run = "true" }
}
