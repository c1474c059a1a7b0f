launcher "local" {}

node "n1" {
  launcher        = "local"
  session_timeout = "30s"
  write_timeout   = "1m"
}

job "j" {
  step "s" { run = "true" }
}
