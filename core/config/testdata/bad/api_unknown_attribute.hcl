server {
  api {
    tokens = ["a", "b"]
  }
}

launcher "local" {}

node "n1" {
  launcher = "local"
}
