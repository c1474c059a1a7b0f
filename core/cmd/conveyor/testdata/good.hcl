# A complete, valid configuration. main_test.go renders it into a temporary
# directory, replacing @PONGAGENT@ and @DATA_DIR@ with this run's paths.

server {
  name      = "e2e"
  http_addr = "127.0.0.1:0"
  data_dir  = "@DATA_DIR@"
}

launcher "local" {}

node "n1" {
  launcher = "local"
  labels   = ["linux"]
  local {
    command = ["@PONGAGENT@"]
  }
}

job "hello" {
  labels = ["linux"]
  param "TARGET" {
    description = "who is greeted"
    default     = "world"
    choices     = ["world", "moon"]
  }
  step "greet" {
    run = "echo hello $TARGET"
  }
}
