server {
  http_addr = "127.0.0.1:99999"
}

launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  step "s" {
    run = "true"
  }
}
