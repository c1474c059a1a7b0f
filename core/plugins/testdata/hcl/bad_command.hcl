server {
  plugin_dir = "@BINDIR@"
  data_dir   = "@DATADIR@"
}

launcher "local" {}

node "n1" {
  launcher = "local"
  local {
    command = ["@PONGAGENT@"]
  }
}

node "n2" {
  launcher = "local"
  local {
    dir     = "/"
    command = ["/nonexistent/x"]
  }
}

job "j" {
  step "s" { run = "true" }
}
