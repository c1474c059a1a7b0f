launcher "local" {}

node "n1" {
  launcher = "local"
  local {
    command = ["/nonexistent/prog"]
  }
}

job "j" {
  step "s" { run = "true" }
}
