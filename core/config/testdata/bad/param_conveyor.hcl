launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  param "CONVEYOR_NODE" {}
  step "s" { run = "true" }
}
