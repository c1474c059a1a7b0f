launcher "local" {}

node "n1" {
  launcher = "local"
  availability {
    mode         = "on_demand"
    idle_timeout = "soon"
  }
}

job "j" {
  step "s" { run = "true" }
}
