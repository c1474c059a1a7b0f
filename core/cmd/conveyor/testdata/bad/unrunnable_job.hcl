launcher "local" {}

node "n1" {
  launcher = "local"
  labels   = ["linux"]
  local {
    command = ["@PONGAGENT@"]
  }
}

job "j" {
  labels = ["linux", "gpu"]
  step "s" { run = "true" }
}
