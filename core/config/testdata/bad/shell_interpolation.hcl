launcher "local" {}

node "n" {
  launcher = "local"
}

job "j" {
  step "greet" {
    run = "echo ${HOME}"
  }
}
