# Operator commands: "commander" is the SDK's test plugin with commands,
# "local" the example plugin without. main_test.go renders the placeholders.

server {
  name     = "commands"
  data_dir = "@DATA_DIR@"
}

launcher "commander" {}
launcher "local" {}

node "a" {
  launcher = "commander"
  commander {
    greeting = "hello"
  }
}

node "b" {
  launcher = "commander"
}

node "c" {
  launcher = "local"
  local {
    command = ["@PONGAGENT@"]
  }
}
