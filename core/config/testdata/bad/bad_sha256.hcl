launcher "local" {
  sha256 = "deadbeef"
}

node "n1" {
  launcher = "local"
}

job "j" {
  step "s" { run = "true" }
}
