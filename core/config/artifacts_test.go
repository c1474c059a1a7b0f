package config

import (
	"os"
	"strings"
	"testing"
)

func TestCheckArtifactPattern(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		err     string // substring; empty: valid
	}{
		{"dist/*.tar.gz", ""},
		{"report.xml", ""},
		{"**/*.xml", ""},
		{"out/**", ""},
		{"a/[bc]?/d", ""},
		{"", "must not be empty"},
		{"/abs/x", "absolute path"},
		{"../x", `".." leads out`},
		{"a/../../x", `".." leads out`},
		{"./x", `"." segments`},
		{"dist/", "empty path segment"},
		{"a//b", "empty path segment"},
		{"dist/x**.gz", `"**" must be a path segment of its own`},
		{"a/[b", "invalid glob syntax"},
	} {
		err := CheckArtifactPattern(tc.pattern)
		if (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("CheckArtifactPattern(%q) = %v, want %q", tc.pattern, err, tc.err)
		}
	}
}

func TestStdinTooLarge(t *testing.T) {
	dir := t.TempDir()
	big := strings.Repeat("x", MaxStdin) // file() reads up to MaxStdin
	writeFile(t, dir+"/big.txt", big)
	writeFile(t, dir+"/c.hcl", `launcher "local" {}
node "n1" { launcher = "local" }
job "j" {
  step "s" {
    run   = "cat"
    stdin = join("", [file("big.txt"), "x"])
  }
}
`)
	_, diags := Load(dir + "/c.hcl")
	if !diags.HasErrors() || diags[0].Summary != "Step stdin too large" || diags[0].Subject.Start.Line != 6 {
		t.Fatalf("diags %v", diags)
	}
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
