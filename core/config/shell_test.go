package config

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestStepShell: a job's shell wins over its node's; neither set leaves
// the agent's default (nil), and the heredoc with $${...} reaches the
// step as ${...}.
func TestStepShell(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shell.hcl")
	src := `
launcher "local" {}
node "login" {
  launcher = "local"
  shell    = ["bash", "-l", "-c"]
}
node "plain" {
  launcher = "local"
}
job "own" {
  shell = ["/bin/bash", "-c"]
  step "s" { run = "true" }
}
job "inherits" {
  step "s" {
    run = <<-EOT
      for f in *; do
        echo "$${f%.txt}"
      done
    EOT
  }
}
`
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	c, diags := Load(path)
	requireNoDiags(t, c.Files, diags)
	login, plain := c.Node("login"), c.Node("plain")
	own, inherits := c.Job("own"), c.Job("inherits")
	for _, tt := range []struct {
		job  *Job
		node *Node
		want []string
	}{
		{own, login, []string{"/bin/bash", "-c"}},
		{own, plain, []string{"/bin/bash", "-c"}},
		{inherits, login, []string{"bash", "-l", "-c"}},
		{inherits, plain, nil},
	} {
		if got := StepShell(tt.job, tt.node); !slices.Equal(got, tt.want) {
			t.Errorf("StepShell(%s, %s) = %q, want %q", tt.job.Name, tt.node.Name, got, tt.want)
		}
	}
	if want := "for f in *; do\n  echo \"${f%.txt}\"\ndone\n"; inherits.Steps[0].Run != want {
		t.Errorf("heredoc run = %q, want %q", inherits.Steps[0].Run, want)
	}
}
