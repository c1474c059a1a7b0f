launcher "local" {}

node "n1" {
  launcher = "local"
  local {
    command = [trimspace(file("secret.txt"))]
  }
}

job "j" {
  step "s" { run = "true" }
}
