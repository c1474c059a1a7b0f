launcher "local" {}

node "n1" {
  launcher = "local"
  labels   = ["linux"]
}

job "j" {
  labels = ["linux", "gpu"]
  step "s" { run = "true" }
}
