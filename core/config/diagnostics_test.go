package config

import (
	"bytes"
	"errors"
	"strings"
	"testing"

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
