launcher "local" {}

node "n1" {
  launcher  = "local"
  executors = 0
}

job "j" {
  step "s" { run = "true" }
}
