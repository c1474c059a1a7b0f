//go:build linux

package main

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// TestValidateExample: `conveyor validate examples/config.hcl` exits 0, the
// way the README's "Done when" runs it, with the real launcher plugins of
// every launcher block it declares. The file is copied as it is now into a
// temporary checkout layout (examples/ beside bin/, which its plugin_dir
// names), so that the check neither needs `make build` nor touches the
// repository's data directory.
func TestValidateExample(t *testing.T) {
	checkNoLeftovers(t)
	root := t.TempDir()
	src, err := os.ReadFile(filepath.Join("..", "..", "..", "examples", "config.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"examples", "bin"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "examples", "config.hcl"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, pkg := range map[string]string{
		"conveyor-launcher-kafka": "../../../plugins/kafka-launcher/cmd/conveyor-launcher-kafka",
		"conveyor-launcher-ssh":   "../../../plugins/ssh-launcher/cmd/conveyor-launcher-ssh",
	} {
		if err := os.Symlink(builtBinary(t, name, pkg), filepath.Join(root, "bin", name)); err != nil {
			t.Fatal(err)
		}
	}

	r := runConveyor(t, root, "validate", "examples/config.hcl")
	if r.code != 0 {
		t.Fatalf("conveyor validate examples/config.hcl: exit %d, want 0\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if want := "examples/config.hcl: configuration is valid\n"; r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
	if regexp.MustCompile(`(?m)Error|\[ERROR\]`).MatchString(r.stderr) {
		t.Errorf("stderr reports errors:\n%s", r.stderr)
	}
	if _, err := os.Stat(filepath.Join(root, "data")); err == nil {
		t.Errorf("validate created the example's data_dir")
	}
}
