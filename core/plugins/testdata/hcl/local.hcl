# The local example launcher with one node running the pong agent. The
# agent only starts when the launcher's global env reached it, which
# shows the plugin was configured (also after a restart).
server {
  plugin_dir = "@BINDIR@"
  data_dir   = "@DATADIR@"
}

launcher "local" {
  env = { CONVEYOR_TEST_CONFIGURED = "yes" }
}

node "n1" {
  launcher = "local"
  labels   = ["linux"]
  local {
    command = ["/bin/sh", "-c", "test \"$CONVEYOR_TEST_CONFIGURED\" = yes && exec \"$0\"", "@PONGAGENT@"]
  }
}

job "j" {
  labels = ["linux"]
  step "s" { run = "true" }
}
