# Loaded together with testdata/multi.

node "n1" {
  launcher = "local"
}
