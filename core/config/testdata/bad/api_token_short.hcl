server {
  api {
    token = "hunter2"
  }
}

launcher "local" {}

node "n1" {
  launcher = "local"
}
