server {
  api {
    public_read = "sometimes"
  }
}

launcher "local" {}

node "n1" {
  launcher = "local"
}
