server {
  plugin_dir = "@BINDIR@"
  data_dir   = "@DATADIR@"
}

launcher "old" {}

launcher "local" {}

node "n1" {
  launcher = "local"
  local {
    command = ["@PONGAGENT@"]
  }
}

node "n2" {
  launcher = "old"
}

job "j" {
  step "s" { run = "true" }
}
