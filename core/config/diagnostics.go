package config

import (
	"fmt"
	"io"

	"github.com/hashicorp/hcl/v2"
)

// WriteDiagnostics prints diags to w. Each diagnostic with a subject starts
// with a line "FILE:LINE:COL: Error: SUMMARY" (or Warning), which editors and
// CI logs recognise, followed by hcl's text rendering of it: the summary, the
// source snippet from files and the detail. Diagnostics without a subject
// (such as an unreadable file) have only hcl's rendering.
func WriteDiagnostics(w io.Writer, files map[string]*hcl.File, diags hcl.Diagnostics) error {
	tw := hcl.NewDiagnosticTextWriter(w, files, 0, false)
	for _, d := range diags {
		if d == nil {
			continue
		}
		if d.Subject != nil {
			sev := "Error"
			if d.Severity == hcl.DiagWarning {
				sev = "Warning"
			}
			s := d.Subject.Start
			if _, err := fmt.Fprintf(w, "%s:%d:%d: %s: %s\n", d.Subject.Filename, s.Line, s.Column, sev, d.Summary); err != nil {
				return fmt.Errorf("writing diagnostics: %w", err)
			}
		}
		if err := tw.WriteDiagnostic(d); err != nil {
			return fmt.Errorf("writing diagnostics: %w", err)
		}
	}
	return nil
}
