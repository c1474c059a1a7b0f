launcher "local" {}

node "n1" {
  launcher = "local"
}

# Ten levels of ten items: 10^10 strings of a kilobyte each.
job "j" {
  labels = [for a in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] : [for b in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] : [for c in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] : [for d in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] : [for e in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] : [for f in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] : [for g in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] : [for h in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] : [for i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] : [for j in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] : "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]]]]]]]]]]
  step "s" {
    run = "true"
  }
}
