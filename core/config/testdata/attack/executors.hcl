launcher "local" {}

node "n1" {
  launcher  = "local"
  executors = 100000000
}

job "j" {
  step "s" {
    run = "true"
  }
}
