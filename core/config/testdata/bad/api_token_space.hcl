server {
  api {
    token = "correct horse battery staple"
  }
}

launcher "local" {}

node "n1" {
  launcher = "local"
}
