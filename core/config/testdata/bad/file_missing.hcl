launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  step "s" { run = file("no-such-script.sh") }
}
