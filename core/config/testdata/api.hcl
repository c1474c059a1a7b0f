# The api block of the server block.
server {
  api {
    token       = env("CONVEYOR_TEST_SURELY_UNSET_API_TOKEN", "0123456789abcdef0123456789abcdef")
    public_read = true
  }
}

launcher "local" {}

node "n1" {
  launcher = "local"
}
