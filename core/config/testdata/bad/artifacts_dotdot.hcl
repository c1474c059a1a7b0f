launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  artifacts = [
    "report.xml",
    "../other-job/secrets.txt",
  ]
  step "s" { run = "true" }
}
