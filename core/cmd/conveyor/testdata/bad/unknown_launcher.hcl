launcher "local" {}

launcher "nosuch" {}

node "n1" {
  launcher = "local"
  local {
    command = ["@PONGAGENT@"]
  }
}

job "j" {
  step "s" { run = "true" }
}
