launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  param "LD_PRELOAD" {}
  step "s" { run = "true" }
}
