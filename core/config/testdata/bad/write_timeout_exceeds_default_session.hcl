launcher "local" {}

node "n1" {
  launcher      = "local"
  write_timeout = "6m"
}

job "j" {
  step "s" { run = "true" }
}
