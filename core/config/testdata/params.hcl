launcher "local" {}

node "n1" {
  launcher = "local"
}

job "deploy" {
  param "TARGET" {
    description = "where to deploy"
    choices     = ["staging", "production"]
    default     = "staging"
  }
  param "VERSION" {
    description = "the version to deploy"
  }
  param "NOTE" {
    default = ""
  }
  step "s" { run = "echo $TARGET $VERSION" }
}

job "plain" {
  step "s" { run = "true" }
}
