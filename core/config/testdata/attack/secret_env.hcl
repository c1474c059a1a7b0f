server {
  log_level = upper(env("CONVEYOR_TEST_SECRET"))
  http_addr = env("CONVEYOR_TEST_SECRET")
}

launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  timeout = "${env("CONVEYOR_TEST_SECRET")}s"
  step "s" {
    run = "true"
  }
}
