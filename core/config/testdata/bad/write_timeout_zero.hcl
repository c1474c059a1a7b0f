launcher "local" {}

node "n1" {
  launcher      = "local"
  write_timeout = "0s"
}

job "j" {
  step "s" { run = "true" }
}
