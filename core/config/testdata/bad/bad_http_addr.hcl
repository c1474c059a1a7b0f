server {
  http_addr = "localhost"
}

launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  step "s" { run = "true" }
}
