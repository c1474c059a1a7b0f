launcher "local" {}
launcher "ssh" {}

node "n1" {
  launcher = "local"
  ssh {
    host = "example.com"
  }
}

job "j" {
  step "s" { run = "true" }
}
