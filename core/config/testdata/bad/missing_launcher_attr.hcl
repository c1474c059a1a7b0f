launcher "local" {}

node "n1" {
  labels = ["x"]
}

job "j" {
  step "s" { run = "true" }
}
