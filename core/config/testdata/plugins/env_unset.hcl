launcher "local" {
  shell = env("CONVEYOR_TEST_SURELY_UNSET_SHELL")
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
