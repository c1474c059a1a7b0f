job "build" {
  labels = ["linux"]
  step "make" { run = "make" }
}
