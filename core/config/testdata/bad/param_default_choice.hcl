launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  param "TARGET" {
    choices = ["staging", "production"]
    default = "prod"
  }
  step "s" { run = "true" }
}
