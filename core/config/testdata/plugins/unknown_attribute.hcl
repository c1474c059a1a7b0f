launcher "local" {
  shell = "/bin/sh"
  limits {
    cpu = 1
  }
}

node "n1" {
  launcher = "local"
  local {
    command = ["cat"]
    colour  = "red"
  }
}

job "j" {
  step "s" { run = "true" }
}
