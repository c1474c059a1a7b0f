server {
  plugin_dir = "@BINDIR@"
  data_dir   = "@DATADIR@"
}

  launcher "nosuch" {}

node "n1" {
  launcher = "nosuch"
}

job "j" {
  step "s" { run = "true" }
}
