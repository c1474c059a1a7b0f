launcher "local" {
  shell = "/bin/sh"
  limits {
    cpu = 1
  }
}

node "n1" {
  launcher = "local"
}

job "j" {
  step "s" { run = "true" }
}
