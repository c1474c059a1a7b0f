//go:build linux

package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestValidateWarnsNodelessKafkaUser: a launcher plugin's warning (here
// the kafka launcher's: embedded.sasl.users names a user after no node,
// as when a node is removed and its user forgotten) is printed with its
// file:line:col, and validate still passes (exit 0).
func TestValidateWarnsNodelessKafkaUser(t *testing.T) {
	checkNoLeftovers(t)
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	kafka := builtBinary(t, "conveyor-launcher-kafka", "../../../plugins/kafka-launcher/cmd/conveyor-launcher-kafka")
	if err := os.Symlink(kafka, filepath.Join(root, "bin", "conveyor-launcher-kafka")); err != nil {
		t.Fatal(err)
	}
	const cfg = `server {
  data_dir   = "data"
  plugin_dir = "bin"
}

launcher "kafka" {
  sasl {
    mechanism = "SCRAM-SHA-512"
    username  = "conveyor"
    password  = "master-password"
  }
  embedded {
    sasl {
      users = { a = "a-password", gone = "gone-password" }
    }
  }
}

node "a" {
  launcher = "kafka"
  kafka {}
}
`
	if err := os.WriteFile(filepath.Join(root, "conveyor.hcl"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runConveyor(t, root, "validate", "conveyor.hcl")
	if r.code != 0 || r.stdout != "conveyor.hcl: configuration is valid\n" {
		t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if !regexp.MustCompile(`(?m)^conveyor\.hcl:14:15: Warning: Suspicious kafka configuration$`).MatchString(r.stderr) ||
		!strings.Contains(r.stderr, `user "gone" is named after no kafka node`) {
		t.Errorf("stderr lacks the warning at conveyor.hcl:14:15 about user gone:\n%s", r.stderr)
	}
	if strings.Contains(r.stderr, "Error") || strings.Contains(r.stderr, `user "a"`) {
		t.Errorf("stderr:\n%s", r.stderr)
	}
	if n := strings.Count(r.stderr, `user "gone" is named after no kafka node`); n != 1 {
		t.Errorf("the warning is printed %d times, want once:\n%s", n, r.stderr)
	}
}
