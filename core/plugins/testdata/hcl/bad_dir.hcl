server {
  plugin_dir = "@BINDIR@"
  data_dir   = "@DATADIR@"
}

launcher "local" {}

node "n1" {
  launcher = "local"
  local {
    command = ["@PONGAGENT@"]
    dir     = "/nonexistent/dir"
  }
}

job "j" {
  step "s" { run = "true" }
}
