server {
  name   = "e2e"
  colour = "blue"
}

launcher "local" {}

node "n1" {
  launcher = "local"
  local {
    command = ["@PONGAGENT@"]
  }
}

job "j" {
  step "s" { run = "true" }
}
