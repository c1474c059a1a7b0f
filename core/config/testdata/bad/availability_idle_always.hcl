launcher "local" {}

node "n1" {
  launcher = "local"
  availability {
    idle_timeout = "5m"
  }
}

job "j" {
  step "s" { run = "true" }
}
