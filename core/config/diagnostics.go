package config

import (
	"bytes"
	"fmt"
	"io"

	"github.com/hashicorp/hcl/v2"
)

// WriteDiagnostics prints diags to w the way hcl's diagnostic text writer
// does (summary, source snippet from files, detail), except that the
// summary line of a diagnostic with a subject is prefixed with its
// position, "FILE:LINE:COL: Error: SUMMARY", which editors and CI logs
// recognise. Diagnostics without a subject (such as an unreadable file)
// are printed as hcl prints them.
func WriteDiagnostics(w io.Writer, files map[string]*hcl.File, diags hcl.Diagnostics) error {
	var buf bytes.Buffer
	tw := hcl.NewDiagnosticTextWriter(&buf, files, 0, false)
	for _, d := range diags {
		if d == nil {
			continue
		}
		buf.Reset()
		if err := tw.WriteDiagnostic(d); err != nil {
			return fmt.Errorf("writing diagnostics: %w", err)
		}
		if d.Subject != nil {
			s := d.Subject.Start
			if _, err := fmt.Fprintf(w, "%s:%d:%d: ", d.Subject.Filename, s.Line, s.Column); err != nil {
				return fmt.Errorf("writing diagnostics: %w", err)
			}
		}
		if _, err := w.Write(buf.Bytes()); err != nil {
			return fmt.Errorf("writing diagnostics: %w", err)
		}
	}
	return nil
}
