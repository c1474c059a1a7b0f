launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  step "s" {
    run   = "cat"
    stdin = file("big.txt")
  }
}
