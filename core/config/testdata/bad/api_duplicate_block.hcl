server {
  api {}
  api {}
}

launcher "local" {}

node "n1" {
  launcher = "local"
}
