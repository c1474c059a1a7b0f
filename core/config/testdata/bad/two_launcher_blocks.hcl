launcher "local" {}

node "n1" {
  launcher = "local"
  local { command = ["a"] }
  local { command = ["b"] }
}

job "j" {
  step "s" { run = "true" }
}
