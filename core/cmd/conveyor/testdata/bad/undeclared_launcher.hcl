launcher "local" {}

node "n1" {
  launcher = "local"
  local {
    command = ["@PONGAGENT@"]
  }
}

node "n2" {
  launcher = "docker"
}

job "j" {
  step "s" { run = "true" }
}
