launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  timeout = file("shadow")
  step "s" {
    run = "true"
  }
}
