# Conveyor example configuration: every block, commented.
# Check it with `conveyor validate examples/config.hcl`; run it with `make run`.

# The master itself. Every attribute is optional.
server {
  name       = "conveyor-demo"
  http_addr  = env("CONVEYOR_HTTP_ADDR", "127.0.0.1:8080") # env(NAME, DEFAULT)
  data_dir   = "../data"                                    # relative to this file
  plugin_dir = "../bin"                                     # else: next to the conveyor binary, then $PATH
  log_level  = "info"                                       # trace, debug, info, warn, error
  log_json   = false
}

# A launcher block loads the plugin binary conveyor-launcher-NAME.
# Everything inside it, except sha256, is the plugin's own configuration,
# checked against the schema the plugin declares.
launcher "local" {
  # sha256 = "..."   # optional: refuse a plugin binary with another checksum
  env = {
    CONVEYOR_DEMO = "1"
  }
}

# A node is a place where builds run, reached through one launcher. The
# block named after the launcher holds the launcher's per-node settings;
# swapping transports means changing `launcher` and that block.
node "local-1" {
  launcher  = "local"
  labels    = ["linux", "demo"]
  executors = 2

  local {
    # The agent the local launcher starts, speaking frames over stdio.
    # `cat` is a loopback that echoes every frame back.
    command = ["cat"]
  }
}

# A job runs its steps in order on a node carrying all of its labels.
job "hello" {
  labels  = ["linux"]
  timeout = "5m"
  env = {
    GREETING = "hello from Conveyor"
  }

  step "greet" {
    run = "echo \"$GREETING\""
  }

  step "where" {
    run = "uname -a && pwd"
  }
}
