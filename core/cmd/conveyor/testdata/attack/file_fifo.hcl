launcher "local" {}

node "n1" {
  launcher = "local"
  local {
    command = ["@PONGAGENT@"]
  }
}

job "j" {
  step "s" {
    run   = "cat"
    stdin = file("fifo")
  }
}
