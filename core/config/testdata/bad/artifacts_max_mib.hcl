launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  artifacts         = ["dist/*.tar.gz"]
  artifacts_max_mib = 0
  step "s" { run = "true" }
}
