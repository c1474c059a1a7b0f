# A configuration that uses every block and attribute.

server {
  name       = "ci-main"
  http_addr  = "0.0.0.0:9090"
  data_dir   = "./state"
  plugin_dir = "../bin"
  log_level  = "debug"
  log_json   = true
}

launcher "local" {
  sha256 = "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"
  shell  = "/bin/sh"
  limits {
    cpu = 2
  }
}

launcher "ssh" {
  user = env("CONVEYOR_TEST_SSH_USER")
}

node "linux-1" {
  launcher  = "local"
  labels    = ["linux", "amd64"]
  executors = 2
  local {
    command = ["cat"]
  }
}

node "mac.builder_2" {
  launcher = "ssh"
  ssh {
    host = "mac.example.com"
  }
}

job "hello" {
  labels  = ["linux"]
  timeout = "30m"
  env = {
    GREETING = trimspace(file("greeting.txt"))
    WHO      = upper(env("CONVEYOR_TEST_SURELY_UNSET_WHO", "world"))
    SHOUT    = lower("LOUD")
  }

  step "greet" {
    run = "echo $GREETING"
  }
  step "done" {
    run = join(" ", ["echo", "done"])
  }
}

job "mac-only" {
  labels  = ["mac.builder_2"]
  timeout = "1h30m"
  step "build" { run = "make" }
}

job "anywhere" {
  artifacts         = ["dist/**/*.tar.gz", "report.xml"]
  artifacts_max_mib = 512
  step "true" { run = "true" }
  step "fed" {
    run   = "cat"
    stdin = file("greeting.txt")
  }
}
