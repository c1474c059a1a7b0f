# An empty token (an unset variable's default): the server generates one.
server {
  api {
    token = env("CONVEYOR_TEST_SURELY_UNSET_API_TOKEN", "")
  }
}

launcher "local" {}

node "n1" {
  launcher = "local"
}
