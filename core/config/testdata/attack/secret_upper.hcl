launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  timeout = upper("x${file("tok")}")
  step "s" {
    run = "true"
  }
}
