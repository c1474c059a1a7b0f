launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  env = { TOKEN = env("CONVEYOR_TEST_SURELY_UNSET_TOKEN") }
  step "s" { run = "true" }
}
