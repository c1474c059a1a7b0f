launcher "local" {}

job "j" {
  step "s" { run = "true" }
}
