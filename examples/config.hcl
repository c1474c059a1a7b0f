# Conveyor example configuration: every block, commented.
# Check it with `conveyor validate examples/config.hcl`; `make run` runs it.

# The master itself. Every attribute is optional.
server {
  name       = "conveyor-demo"
  http_addr  = env("CONVEYOR_HTTP_ADDR", "127.0.0.1:8080") # env(NAME, DEFAULT)
  data_dir   = "../data"                                    # relative to this file
  plugin_dir = "../bin"                                     # else: next to the conveyor binary, then $PATH
  log_level  = env("CONVEYOR_LOG_LEVEL", "info")            # trace, debug, info, warn, error
  log_json   = false

  # Who may use the HTTP API. Every endpoint but GET /healthz needs
  # "Authorization: Bearer TOKEN" (conveyor: CONVEYOR_TOKEN, or -token-file).
  api {
    # Empty or unset: the server generates a token at first start into
    # data_dir/api-token (mode 0600) and uses it from then on. A token set
    # here must be at least 16 printable characters; keep it out of the
    # file with env(). The server removes CONVEYOR_TOKEN from the
    # environment its plugins and agents inherit.
    token = env("CONVEYOR_TOKEN", "")
    # true: reading (nodes, jobs, builds, logs, plugins) needs no token.
    # Triggering, cancelling, deleting nodes and node secrets always do.
    public_read = false
  }
}

# A launcher block loads the plugin binary conveyor-launcher-NAME.
# Everything in it but `sha256` is the plugin's own configuration, checked
# against the schema the plugin declares.
launcher "kafka" {
  # sha256 = "..."   # optional: refuse a plugin binary with another checksum

  # No brokers: the plugin runs an embedded Kafka-compatible broker on
  # embedded_addr, keeping its data under data_dir so it survives a restart.
  # Real deployments list their brokers:
  #   brokers = ["kafka-1.example.com:9093", "kafka-2.example.com:9093"]
  brokers       = []
  embedded_addr = env("CONVEYOR_KAFKA_ADDR", "127.0.0.1:9092")

  topic_prefix       = "conveyor."
  partitions         = 1
  replication_factor = 1

  # Encrypted and authenticated brokers:
  # tls {
  #   ca_file   = "/etc/conveyor/kafka-ca.pem"
  #   cert_file = "/etc/conveyor/client.pem"
  #   key_file  = "/etc/conveyor/client-key.pem"
  # }
  # sasl {
  #   mechanism = "SCRAM-SHA-512"
  #   username  = "conveyor"
  #   password  = env("KAFKA_PASSWORD")
  # }
  #
  # This demo's embedded broker is plaintext on loopback (the plugin logs
  # so). It can run with TLS, SASL users per node and ACLs instead; the
  # tls/sasl blocks above are then the master's side:
  # embedded {
  #   tls {
  #     cert_file = "/etc/conveyor/broker.pem"
  #     key_file  = "/etc/conveyor/broker-key.pem"
  #   }
  #   sasl {
  #     mechanism = "SCRAM-SHA-512"
  #     users     = { "kafka-1" = env("KAFKA_1_PASSWORD") }
  #   }
  #   acls = true   # each agent reads only its commands, writes only its events
  # }
}

# The SSH launcher: the traditional transport. It uploads conveyor-agent
# (found next to the plugin unless agent_binary says otherwise) to each SSH
# node and speaks over the session's stdin/stdout. A dropped connection
# fails the running build: that is what the Kafka launcher avoids.
launcher "ssh" {
  # agent_binary = "/usr/local/lib/conveyor/conveyor-agent"
  # At most this many of its nodes are launched at once (the others show
  # that they wait for a launch slot).
  max_concurrent_launches = 10
}

# A node is a place where builds run, reached through one launcher. A node
# may set `shell` (see the job "login-shell" below) for the jobs run on it. The
# block named after the launcher holds that launcher's per-node settings:
# moving a node to another transport means changing `launcher` and that block.
node "kafka-1" {
  launcher  = "kafka"
  labels    = ["linux", "demo"]
  executors = 2
  # How long a silent agent's builds are held (the node shows unreachable
  # after heartbeat_timeout) before they fail with "agent lost".
  heartbeat_timeout = "30s"
  session_timeout   = "5m"
  # How long a write the master's disk refuses (it is full) is retried
  # before the step fails; the node's other builds wait meanwhile.
  write_timeout = "60s"
  kafka {}
}

node "kafka-2" {
  launcher  = "kafka"
  labels    = ["linux", "demo", "big"]
  executors = 1
  kafka {}
}

# An SSH node (commented out: `make run` has no SSH host to reach). To move
# a node between transports, change its `launcher` and its launcher block.
# node "ssh-1" {
#   launcher  = "ssh"
#   labels    = ["linux"]
#   executors = 2
#   # Launched when a queued build needs its labels, taken offline after
#   # idle_timeout without builds (default: mode = "always").
#   availability {
#     mode         = "on_demand"
#     idle_timeout = "10m"
#   }
#   ssh {
#     host             = "build-1.example.com"
#     port             = 22
#     user             = "build"
#     private_key_file = "/etc/conveyor/id_ed25519"
#     host_key_verification {
#       strategy         = "known_hosts"
#       known_hosts_file = "/etc/conveyor/known_hosts"
#       # Or: strategy = "trust_on_first_use" with require_approval = true:
#       # the first key waits for `conveyor node approve-key NODE SHA256:...`.
#     }
#     workdir        = "/var/lib/conveyor-agent"
#     launch_timeout = "60s"
#     max_retries    = 10
#     retry_wait     = "15s"
#   }
# }

# A job runs its steps in order on a node that carries all of its labels
# (a node's name is one of its labels).
#
# param blocks declare the build parameters a trigger may set
# (conveyor build -p NAME=VALUE, the UI's form, the API): each becomes an
# environment variable of the steps. A trigger with any other name, or a
# value outside choices, is refused. Without a default the parameter is
# required. Names match [A-Z_][A-Z0-9_]*; names the shell, the loader or the
# agent interpret (PATH, LD_*, BASH_ENV, ENV, IFS, HOME, CONVEYOR_*, ...) are
# refused: see SECURITY.md.
job "hello" {
  labels = ["linux"]
  env = {
    GREETING = "hello from Conveyor"
  }

  param "NAME" {
    description = "who is greeted"
    default     = "world"
  }
  param "MOOD" {
    description = "how"
    default     = "cheerful"
    choices     = ["cheerful", "calm"]
  }

  step "greet" {
    run = "echo \"$GREETING to $NAME ($MOOD), build $CONVEYOR_BUILD_NUMBER on $CONVEYOR_NODE\""
  }
}

# Shell in HCL: a step's run is an HCL string, and HCL reads ${...} in it
# as its own interpolation: run = "echo ${HOME}" is an error ("Variables
# not allowed"; the message says so). To pass ${...} to the shell, write
# $${...}; $HOME without braces needs nothing. A heredoc (<<-EOT ... EOT,
# its indentation removed) suits multi-line scripts and takes the same
# escape.
#
# shell: what the steps run under, the script appended as the last
# argument. The default is ["/bin/sh", "-c"]: not a login shell, so
# /etc/profile and ~/.profile are not read (~/.bashrc may be, through
# Debian's bash) -- the same as Jenkins. A node's shell applies to every
# job run on it, a job's wins over it. It needs a conveyor-agent that
# knows the setting (one announcing the "shell" feature): an older agent
# fails the step, saying so, rather than running it under /bin/sh.
job "login-shell" {
  labels = ["linux"]
  shell  = ["bash", "-l", "-c"]

  step "env" {
    run = <<-EOT
      for v in HOME PATH; do
        echo "$v=$${!v}"
      done
      echo "on $${HOSTNAME:-unknown}"
    EOT
  }
}

# artifacts: glob patterns, relative to the build's workspace, of the files
# the master keeps once the steps ended (successful or failed; not when
# cancelled, timed out or the agent was lost). "**" matches any number of
# directories; absolute paths and ".." are refused, and so is a file whose
# symbolic link leads outside the workspace. They travel through the
# agent's session like output (a cut Kafka link only pauses them), land in
# data_dir next to the build's log with their sha256, and come back with
# `conveyor artifacts JOB N [-o DIR]` or GET .../builds/N/artifacts. A
# pattern that matches nothing is noted in the log and the build's reason
# without failing it. artifacts_max_mib (default 4096) bounds what one
# build's artifacts take on the master: a transfer beyond fails the build.
#
# stdin: a step's standard input (a string; file("...") reads one); without
# it the step reads /dev/null.
job "multi-step" {
  labels            = ["linux"]
  timeout           = "5m"
  artifacts         = ["dist/*.tar.gz", "reports/**/*.txt"]
  artifacts_max_mib = 64

  step "checkout" {
    run = "mkdir -p src && echo 'package main' > src/main.go && ls -l src"
  }
  step "build" {
    run = "wc -c src/main.go && mkdir -p dist && tar czf dist/app.tar.gz src && echo built"
  }
  step "test" {
    run   = "mkdir -p reports/unit && tee reports/unit/summary.txt && grep -q main src/main.go && echo 'tests passed'"
    stdin = "unit tests: 1 passed\n"
  }
}

job "failing" {
  labels = ["linux"]

  step "fails" {
    run = "echo 'about to fail' >&2; exit 3"
  }
  step "never-runs" {
    run = "echo 'this step is skipped'"
  }
}

job "long" {
  labels  = ["linux"]
  timeout = "10m"

  step "tick" {
    run = "for i in $(seq 1 120); do echo \"tick $i\"; sleep 1; done"
  }
}

job "big-output" {
  labels = ["big"]

  step "generate" {
    run = "seq 1 2000000"
  }
}
