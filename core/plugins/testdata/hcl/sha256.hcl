server {
  plugin_dir = "@BINDIR@"
  data_dir   = "@DATADIR@"
}

launcher "local" {
  sha256 = "@SHA256@"
}

node "n1" {
  launcher = "local"
  local {
    command = ["@PONGAGENT@"]
  }
}

job "j" {
  step "s" { run = "true" }
}
