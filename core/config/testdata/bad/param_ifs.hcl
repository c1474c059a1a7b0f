launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  param "IFS" {}
  step "s" { run = "true" }
}
