launcher "local" {}

node "n1" {
  launcher = "local"
}

job "j" {
  step "s" {
    run = <<-EOT
      %{ for a in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] }%{ for b in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] }%{ for c in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] }echo ${file("/etc/hostname")}
      %{ endfor }%{ endfor }%{ endfor }
    EOT
  }
}
