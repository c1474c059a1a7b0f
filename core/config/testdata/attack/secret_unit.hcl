launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  timeout = "1${trimspace(file("tok"))}"
  step "s" {
    run = "true"
  }
}
