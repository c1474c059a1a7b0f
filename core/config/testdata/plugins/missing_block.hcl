launcher "local" {
  shell = "/bin/sh"
}

node "n1" {
  launcher = "local"
  local {
    command = ["cat"]
  }
}

job "j" {
  step "s" { run = "true" }
}
