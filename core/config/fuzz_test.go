package config

import (
	"io"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds arbitrary bytes to Load as a configuration file: it must
// never panic, always return a Config with Files set, and explain every
// failure with diagnostics that can be printed. The seeds are committed
// under testdata/fuzz/FuzzLoad (good.hcl, minimal.hcl, api.hcl and every
// file of testdata/bad) and run with every `go test`; `make fuzz` searches
// further.
func FuzzLoad(f *testing.F) {
	dir := f.TempDir()
	// file() calls resolve against the temporary directory, which holds
	// greeting.txt like testdata does.
	if err := os.WriteFile(filepath.Join(dir, "greeting.txt"), []byte("Hello from a file!\n"), 0o600); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		name := filepath.Join(dir, "fuzz.hcl")
		if err := os.WriteFile(name, src, 0o600); err != nil {
			t.Fatal(err)
		}
		c, diags := Load(name)
		if c == nil || c.Files == nil {
			t.Fatalf("Load returned config %v, want a non-nil one with Files", c)
		}
		if err := WriteDiagnostics(io.Discard, c.Files, diags); err != nil {
			t.Fatalf("WriteDiagnostics: %v", err)
		}
		if diags.HasErrors() {
			return
		}
		// A configuration without errors is complete and consistent.
		if c.Server.DataDir == "" || c.Server.HTTPAddr == "" {
			t.Fatalf("server %+v lacks defaults", c.Server)
		}
		for _, n := range c.Nodes {
			if c.Launcher(n.Launcher) == nil || n.Executors < 1 || n.Body == nil {
				t.Fatalf("node %+v is inconsistent", n)
			}
		}
		for _, j := range c.Jobs {
			if len(j.Steps) == 0 || !c.canRun(j.Labels) {
				t.Fatalf("job %+v is inconsistent", j)
			}
		}
	})
}
