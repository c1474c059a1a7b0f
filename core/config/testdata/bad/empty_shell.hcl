launcher "local" {}

node "n" {
  launcher = "local"
  shell    = []
}

job "j" {
  step "s" { run = "true" }
}
