launcher "local" {
  shell = "/bin/sh"
  limits {
    cpu = 1
  }
}

launcher "bare" {
  anything = true
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
