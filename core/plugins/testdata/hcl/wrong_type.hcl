server {
  plugin_dir = "@BINDIR@"
  data_dir   = "@DATADIR@"
}

launcher "local" {}

node "n1" {
  launcher = "local"
  local {
    command = ["@PONGAGENT@"]
    env     = { A = "1" }
    dir     = ["not", "a", "string"]
  }
}

job "j" {
  step "s" { run = "true" }
}
