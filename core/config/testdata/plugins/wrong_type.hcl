launcher "local" {
  shell    = "/bin/sh"
  parallel = "many"
  limits {
    cpu = 1
  }
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
