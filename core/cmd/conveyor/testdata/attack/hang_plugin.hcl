server {
  plugin_dir = "@PLUGIN_DIR@"
  data_dir   = "@DATA_DIR@"
  http_addr  = "127.0.0.1:0"
}

# conveyor-launcher-hang never completes the plugin handshake.
launcher "hang" {}

node "n1" {
  launcher = "hang"
}

job "j" {
  step "s" { run = "true" }
}
