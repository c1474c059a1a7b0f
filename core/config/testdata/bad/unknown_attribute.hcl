launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  retries = 3
  step "s" { run = "true" }
}
