launcher "local" {}

node "n1" {
  launcher = "local"
  labels   = ["linux"]
}

job "j" {
  step "s" { run = "true" }
}
