launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  param "" {}
  step "s" { run = "true" }
}
