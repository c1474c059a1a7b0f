server {
  plugin_dir = "@BINDIR@"
  data_dir   = "@DATADIR@"
}

launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  step "s" { run = "true" }
}
