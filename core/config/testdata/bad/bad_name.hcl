launcher "local" {}

node "linux/1" {
  launcher = "local"
}

job "j" {
  step "s" { run = "true" }
}
