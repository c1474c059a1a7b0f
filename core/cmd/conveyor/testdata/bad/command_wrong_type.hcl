launcher "local" {}

node "n1" {
  launcher = "local"
  local {
    command = "notalist"
  }
}

job "j" {
  step "s" { run = "true" }
}
