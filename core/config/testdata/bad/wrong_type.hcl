launcher "local" {}

node "n1" {
  launcher  = "local"
  executors = "two"
}

job "j" {
  step "s" { run = "true" }
}
