launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  param "Q" {
    default = "zz"
    choices = ["a", "x${trimspace(file("tok"))}"]
  }
  step "s" {
    run = "true"
  }
}
