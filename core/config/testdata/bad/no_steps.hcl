launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  labels = ["n1"]
}
