server {
  data_dir = "/var/lib/conveyor"
}

launcher "local" {}
