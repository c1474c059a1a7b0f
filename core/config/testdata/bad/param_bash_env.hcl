launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  param "BASH_ENV" { default = "" }
  step "s" { run = "true" }
}
