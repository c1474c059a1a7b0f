launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  artifacts = ["dist/*.tar.gz", "/var/log/syslog"]
  step "s" { run = "true" }
}
