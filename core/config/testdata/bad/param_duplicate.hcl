launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  param "A" {}
  param "A" {}
  step "s" { run = "true" }
}
