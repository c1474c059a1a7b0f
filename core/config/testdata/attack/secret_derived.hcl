server {
  log_level = lower(file("tok"))
  http_addr = "127.0.0.1:${trimspace(file("tok"))}"
}

launcher "local" {}

node "n1" {
  launcher          = "local"
  heartbeat_timeout = "1${join("", ["-", trimspace(file("tok"))])}"
  session_timeout   = "-${trimspace(file("tok"))}"
}

node "n2" {
  launcher = trimspace(file("tok"))
}

job "j" {
  labels    = [join("-", ["a", trimspace(file("tok"))])]
  artifacts = ["../${trimspace(file("tok"))}"]
  timeout   = file("tok") == "" ? "1s" : "${upper(file("tok"))}s"
  step "s" {
    run = "true"
  }
}
