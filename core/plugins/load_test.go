package plugins

import (
	"crypto/sha256"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

func fileSHA256Hex(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

// onlyError returns the single diagnostic of diags, which must be an error.
func onlyError(t *testing.T, diags hcl.Diagnostics, text string) *hcl.Diagnostic {
	t.Helper()
	if len(diags) != 1 || diags[0].Severity != hcl.DiagError {
		t.Fatalf("want exactly one error diagnostic, got %d:\n%s", len(diags), text)
	}
	if diags[0].Subject == nil {
		t.Fatalf("diagnostic has no subject:\n%s", text)
	}
	return diags[0]
}

func at(r *hcl.Range) string {
	return fmt.Sprintf("%d:%d", r.Start.Line, r.Start.Column)
}

func TestLoadSHA256Pin(t *testing.T) {
	right := fileSHA256Hex(t, localBin)
	wrong := strings.Repeat("0", 64)
	tests := []struct {
		name string
		pin  string
		ok   bool
	}{
		{"right", right, true},
		{"right in upper case", strings.ToUpper(right), true},
		{"wrong", wrong, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := newManager(t)
			cfg := loadConfig(t, "sha256.hcl", "@SHA256@", tt.pin)
			diags := Load(testContext(t), cfg, m, LoadOptions{})
			text := diagText(cfg, diags)
			if tt.ok {
				if len(diags) > 0 {
					t.Fatalf("Load:\n%s", text)
				}
				if p := m.Get("local"); p == nil || p.Info().Name != "local" {
					t.Fatal("pinned plugin not started")
				}
				return
			}
			d := onlyError(t, diags, text)
			if want := cfg.Launcher("local").DefRange; *d.Subject != want {
				t.Errorf("subject %v, want the launcher block's range %v", *d.Subject, want)
			}
			if got := at(d.Subject); got != "6:1" {
				t.Errorf("error at %s, want 6:1:\n%s", got, text)
			}
			if d.Summary != "Launcher plugin failed to start" {
				t.Errorf("summary %q", d.Summary)
			}
			for _, s := range []string{"refusing", "sha256 is " + right, "pins " + wrong} {
				if !strings.Contains(d.Detail, s) {
					t.Errorf("detail %q does not mention %q", d.Detail, s)
				}
			}
			if p := m.Get("local"); p != nil {
				t.Errorf("plugin with a mismatched pin was started (pid %d)", p.Process().Pid())
			}
		})
	}
}

// TestLoadDiagnostics checks that configuration problems found through the
// plugin (or its schema) point at the offending line and column.
func TestLoadDiagnostics(t *testing.T) {
	tests := []struct {
		file    string // in testdata/hcl
		pos     string // LINE:COL of the diagnostic's subject
		summary string
		detail  []string // substrings of the detail
	}{
		{"unknown.hcl", "6:3", "Unknown launcher",
			[]string{`Launcher "nosuch"`, "plugin binary not found", BinaryPrefix + "nosuch", binDir, "$PATH"}},
		// Reported by the plugin's Configure, mapped to the attribute.
		{"bad_command.hcl", "19:15", "Invalid local configuration",
			[]string{`command: program "/nonexistent/x" not found`}},
		{"bad_dir.hcl", "12:15", "Invalid local configuration",
			[]string{`dir: "/nonexistent/dir" is not a directory`}},
		// Reported by decoding against the plugin's schema.
		{"wrong_type.hcl", "13:15", "Incorrect attribute value type",
			[]string{`"dir"`, "string required"}},
		{"missing_block.hcl", "8:1", "Missing required argument",
			[]string{`"command" is required, but this node has no local block`}},
	}
	for _, tt := range tests {
		t.Run(strings.TrimSuffix(tt.file, ".hcl"), func(t *testing.T) {
			t.Parallel()
			m := newManager(t)
			cfg := loadConfig(t, tt.file)
			diags := Load(testContext(t), cfg, m, LoadOptions{})
			text := diagText(cfg, diags)
			d := onlyError(t, diags, text)
			if got := at(d.Subject); got != tt.pos {
				t.Errorf("error at %s, want %s:\n%s", got, tt.pos, text)
			}
			if _, ok := cfg.Files[d.Subject.Filename]; !ok {
				t.Errorf("subject file %q is not a configuration file", d.Subject.Filename)
			}
			if d.Summary != tt.summary {
				t.Errorf("summary %q, want %q", d.Summary, tt.summary)
			}
			for _, s := range tt.detail {
				if !strings.Contains(d.Detail, s) {
					t.Errorf("detail %q does not mention %q", d.Detail, s)
				}
			}
			// The rendered form, as the conveyor command prints it.
			if want := fmt.Sprintf("%s:%s: Error: %s", d.Subject.Filename, tt.pos, tt.summary); !strings.Contains(text, want) {
				t.Errorf("rendered diagnostics lack %q:\n%s", want, text)
			}
		})
	}
}
