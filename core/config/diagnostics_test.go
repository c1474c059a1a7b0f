package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
)

func TestWriteDiagnostics(t *testing.T) {
	p := hclparse.NewParser()
	if _, d := p.ParseHCL([]byte("a = 1\nbad = 2\n"), "x.hcl"); d.HasErrors() {
		t.Fatal(d)
	}
	rng := hcl.Range{Filename: "x.hcl", Start: hcl.Pos{Line: 2, Column: 7, Byte: 12}, End: hcl.Pos{Line: 2, Column: 8, Byte: 13}}
	tests := []struct {
		name string
		diag *hcl.Diagnostic
		want []string
	}{
		{"error", &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Boom", Detail: "It broke.", Subject: &rng},
			[]string{"x.hcl:2:7: Error: Boom\n", "bad = 2", "It broke."}},
		{"warning", &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Careful", Subject: &rng},
			[]string{"x.hcl:2:7: Warning: Careful\n", "bad = 2"}},
		{"no subject", &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Nowhere", Detail: "No place."},
			[]string{"Error: Nowhere\n", "No place."}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteDiagnostics(&buf, p.Files(), hcl.Diagnostics{tt.diag}); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(buf.String(), tt.want[0]) {
				t.Errorf("output does not start with %q:\n%s", tt.want[0], buf.String())
			}
			for _, w := range tt.want[1:] {
				if !strings.Contains(buf.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, buf.String())
				}
			}
		})
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriteDiagnosticsError(t *testing.T) {
	rng := hcl.Range{Filename: "x.hcl", Start: hcl.InitialPos, End: hcl.InitialPos}
	err := WriteDiagnostics(failWriter{}, nil, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "x", Subject: &rng}})
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("err = %v, want the write error", err)
	}
}

// TestWriteDiagnosticsMatchesHCL: the snippets WriteDiagnostics cuts
// itself are exactly what hcl's text writer prints, for every diagnostic of
// the bad and malicious fixtures and for multi-line, empty and CRLF ranges.
func TestWriteDiagnosticsMatchesHCL(t *testing.T) {
	var all []struct {
		files map[string]*hcl.File
		diags hcl.Diagnostics
	}
	for _, pattern := range []string{"testdata/bad/*.hcl", "testdata/attack/*.hcl"} {
		names, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range names {
			c, diags := Load(name)
			all = append(all, struct {
				files map[string]*hcl.File
				diags hcl.Diagnostics
			}{c.Files, diags})
		}
	}
	p := hclparse.NewParser()
	src := "a = 1\r\n\r\nb {\r\n  c = [\n    1,\n\n    2,\n  ]\n}\nlast = 3"
	if _, d := p.ParseHCL([]byte(src), "crlf.hcl"); d.HasErrors() {
		t.Fatal(d)
	}
	rng := func(sb, eb int) *hcl.Range {
		return &hcl.Range{Filename: "crlf.hcl", Start: hcl.Pos{Byte: sb, Line: 1, Column: 1}, End: hcl.Pos{Byte: eb, Line: 1, Column: 1}}
	}
	var synthetic hcl.Diagnostics
	for _, r := range [][2]int{{0, 0}, {0, 5}, {4, 4}, {9, 30}, {23, 40}, {len(src) - 1, len(src)}, {len(src), len(src)}, {5, 7}} {
		synthetic = append(synthetic, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "s", Detail: "d", Subject: rng(r[0], r[1])})
	}
	synthetic = append(synthetic, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "ctx", Subject: rng(12, 14), Context: rng(9, 40)})
	all = append(all, struct {
		files map[string]*hcl.File
		diags hcl.Diagnostics
	}{p.Files(), synthetic})

	n := 0
	for _, set := range all {
		for _, d := range set.diags {
			f := subjectFile(set.files, d)
			if f == nil {
				continue
			}
			var want, got bytes.Buffer
			if err := hcl.NewDiagnosticTextWriter(&want, set.files, 0, false).WriteDiagnostic(d); err != nil {
				t.Fatal(err)
			}
			writeSnippetDiagnostic(&got, f, lineStarts(f.Bytes), d)
			if got.String() != want.String() {
				t.Errorf("diagnostic %q at %v:\ngot:\n%s\nwant (hcl):\n%s", d.Summary, d.Subject, got.String(), want.String())
			}
			n++
		}
	}
	if n < 50 {
		t.Errorf("compared %d diagnostics, want the fixtures' (at least 50)", n)
	}
}

// TestWriteManyDiagnostics: a large configuration with an error in every
// block prints at once (hcl's writer scanned the whole file for each
// diagnostic: minutes for this one, over an hour at MaxConfigFileBytes).
func TestWriteManyDiagnostics(t *testing.T) {
	var b strings.Builder
	for i := 0; b.Len() < MaxConfigFileBytes/4; i++ {
		fmt.Fprintf(&b, "job \"j%d\" {\n  labels = [\"a\", \"b\"]\n  step \"s\" { run = \"true\" }\n}\n", i)
	}
	name := filepath.Join(t.TempDir(), "many.hcl")
	if err := os.WriteFile(name, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	c, diags := Load(name)
	if len(diags) < 3000 {
		t.Fatalf("%d diagnostics, want one per job", len(diags))
	}
	done := make(chan error, 1)
	var out bytes.Buffer
	go func() { done <- WriteDiagnostics(&out, c.Files, diags) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("printing %d diagnostics took over a minute", len(diags))
	}
	if n := strings.Count(out.String(), ": Error: Job cannot run on any node"); n != len(diags) {
		t.Errorf("printed %d diagnostics, want %d", n, len(diags))
	}
}
