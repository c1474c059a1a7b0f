node "n1" {
  launcher = "local"
  labels   = ["linux"]
}
