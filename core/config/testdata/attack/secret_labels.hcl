launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  labels = [trimspace(file("shadow"))]
  step "s" {
    run = "true"
  }
}
