# The Docker demo's master (docker/docker-compose.yml, `make docker-up`):
# a real Apache Kafka broker reached over TLS with SCRAM-SHA-512, two Kafka
# nodes whose agents run in containers of their own, and an SSH node whose
# build host is a container running sshd. Everything under /pki is
# generated at first start by docker/gen-certs.sh; CONVEYOR_PKI points
# elsewhere (the native end-to-end test of this topology, core/e2e, sets it
# to the script's output in a temporary directory).
#
# Check it with `CONVEYOR_PKI=DIR conveyor validate docker/config.hcl`.

server {
  name      = "conveyor-docker-demo"
  http_addr = env("CONVEYOR_HTTP_ADDR", "0.0.0.0:8080") # published on 127.0.0.1:8080 only
  data_dir  = env("CONVEYOR_DATA_DIR", "/var/lib/conveyor")
  log_level = env("CONVEYOR_LOG_LEVEL", "info")

  api {
    # Unset: the master generates its token into data_dir/api-token;
    # `make docker-up` prints how to read it.
    token = env("CONVEYOR_TOKEN", "")
  }
}

launcher "kafka" {
  brokers            = ["kafka:9092"]
  topic_prefix       = "conveyor."
  partitions         = 1
  replication_factor = 1

  # The broker's SASL_SSL listener: its certificate is signed by the
  # demo's CA and names the host "kafka".
  tls {
    ca_file = "${env("CONVEYOR_PKI", "/pki")}/public/ca.pem"
  }
  # The master's own Kafka user, a superuser of the demo's broker (it
  # creates the nodes' topics; setup.sh applies the agents' ACLs as it).
  # Each agent has a user named after its node, confined by those ACLs.
  sasl {
    mechanism = "SCRAM-SHA-512"
    username  = "conveyor"
    password  = file("${env("CONVEYOR_PKI", "/pki")}/conveyor/kafka.password")
  }
}

# conveyor-agent next to the plugin is what it uploads to SSH nodes whose
# copy differs (the SSH agent's image ships the same build).
launcher "ssh" {}

node "kafka-1" {
  launcher          = "kafka"
  labels            = ["linux", "kafka"]
  executors         = 2
  heartbeat_timeout = "30s"
  session_timeout   = "5m"
  kafka {}
}

node "kafka-2" {
  launcher  = "kafka"
  labels    = ["linux", "kafka", "big"]
  executors = 1
  kafka {}
}

node "ssh-1" {
  launcher  = "ssh"
  labels    = ["linux", "ssh"]
  executors = 2
  ssh {
    host             = "ssh-agent"
    port             = 22
    user             = "conveyor"
    private_key_file = "${env("CONVEYOR_PKI", "/pki")}/conveyor/id_ed25519"
    host_key_verification {
      strategy         = "known_hosts"
      known_hosts_file = "${env("CONVEYOR_PKI", "/pki")}/conveyor/known_hosts"
    }
    agent_path  = "/opt/conveyor/conveyor-agent"
    workdir     = "/home/conveyor/work"
    max_retries = 60
    retry_wait  = "2s"
  }
}

# The demo jobs: each one passes (the native end-to-end test runs them
# all). Try: conveyor build -follow hello
job "hello" {
  labels = ["linux"]
  env = {
    GREETING = "hello from Conveyor"
  }
  # Build parameters: only declared ones are accepted (SECURITY.md).
  param "NAME" {
    description = "who is greeted"
    default     = "world"
  }
  step "greet" {
    run = "echo \"$GREETING to $NAME, build $CONVEYOR_BUILD_NUMBER on $CONVEYOR_NODE\""
  }
}

job "multi-step" {
  labels  = ["linux"]
  timeout = "5m"
  step "checkout" {
    run = "mkdir -p src && printf 'hello\\nworld\\n' > src/words.txt && ls src"
  }
  step "build" {
    run = "sort src/words.txt > sorted.txt && wc -l < sorted.txt"
  }
  step "test" {
    run = "grep -qx world sorted.txt && echo 'tests passed'"
  }
}

# A node's name is one of its labels: these run on one node each.
job "over-kafka" {
  labels = ["kafka-1"]
  step "where" {
    run = "echo \"$CONVEYOR_NODE: build $CONVEYOR_BUILD_NUMBER over Kafka, TLS and SCRAM-SHA-512\"; uname -sm"
  }
}

job "over-ssh" {
  labels = ["ssh"]
  step "where" {
    run = "echo \"$CONVEYOR_NODE: build $CONVEYOR_BUILD_NUMBER over SSH\"; uname -sm"
  }
}

job "big-output" {
  labels = ["big"]
  step "generate" {
    run = "seq 1 200000"
  }
}
