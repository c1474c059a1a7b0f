launcher "local" {
  max_concurrent_launches = 0
}

node "n1" {
  launcher = "local"
}

job "j" {
  step "s" { run = "true" }
}
