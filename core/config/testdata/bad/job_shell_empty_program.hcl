launcher "local" {}

node "n" {
  launcher = "local"
}

job "j" {
  shell = ["", "-c"]
  step "s" { run = "true" }
}
