package config

import (
	"bytes"
	"fmt"
	"io"
	"sort"

	"github.com/hashicorp/hcl/v2"
)

// WriteDiagnostics prints diags to w the way hcl's diagnostic text writer
// does (summary, source snippet from files, detail), except that the
// summary line of a diagnostic with a subject is prefixed with its
// position, "FILE:LINE:COL: Error: SUMMARY", which editors and CI logs
// recognise. Diagnostics without a subject (such as an unreadable file)
// are printed as hcl prints them.
//
// The snippets are cut with a line index built once per file: hcl's writer
// scans the whole file for each diagnostic, so a 1 MiB configuration with
// 15,000 errors took over an hour to print.
func WriteDiagnostics(w io.Writer, files map[string]*hcl.File, diags hcl.Diagnostics) error {
	var buf bytes.Buffer
	tw := hcl.NewDiagnosticTextWriter(&buf, files, 0, false)
	index := map[string][]int{}
	for _, d := range diags {
		if d == nil {
			continue
		}
		buf.Reset()
		var err error
		if f := subjectFile(files, d); f != nil {
			starts, ok := index[d.Subject.Filename]
			if !ok {
				starts = lineStarts(f.Bytes)
				index[d.Subject.Filename] = starts
			}
			writeSnippetDiagnostic(&buf, f, starts, d)
		} else {
			err = tw.WriteDiagnostic(d)
		}
		if err != nil {
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

// subjectFile returns the source of d's subject, or nil when d has no
// subject or its file's source is unknown.
func subjectFile(files map[string]*hcl.File, d *hcl.Diagnostic) *hcl.File {
	if d.Subject == nil {
		return nil
	}
	if f := files[d.Subject.Filename]; f != nil && f.Bytes != nil {
		return f
	}
	return nil
}

// lineStarts returns the byte offset of each line of src.
func lineStarts(src []byte) []int {
	starts := []int{0}
	for i, c := range src {
		if c == '\n' && i+1 < len(src) {
			starts = append(starts, i+1)
		}
	}
	return starts
}

// writeSnippetDiagnostic writes d, whose subject is in f, exactly as hcl's
// text writer does without colour: our evaluation contexts hold no
// variables, so hcl's "with NAME as VALUE" lines never apply.
func writeSnippetDiagnostic(buf *bytes.Buffer, f *hcl.File, starts []int, d *hcl.Diagnostic) {
	severity := "???????"
	switch d.Severity {
	case hcl.DiagError:
		severity = "Error"
	case hcl.DiagWarning:
		severity = "Warning"
	}
	fmt.Fprintf(buf, "%s: %s\n\n", severity, d.Summary)

	snip := *d.Subject
	if d.Context != nil {
		snip = hcl.RangeOver(snip, *d.Context)
	}
	if snip.Empty() {
		snip.End.Byte++
		snip.End.Column++
	}
	context := ""
	if cs, ok := f.Nav.(interface{ ContextString(offset int) string }); ok {
		if c := cs.ContextString(d.Subject.Start.Byte); c != "" {
			context = ", in " + c
		}
	}
	fmt.Fprintf(buf, "  on %s line %d%s:\n", d.Subject.Filename, d.Subject.Start.Line, context)
	src := f.Bytes
	lineOf := func(offset int) int { return max(sort.SearchInts(starts, offset+1)-1, 0) }
	for i := lineOf(snip.Start.Byte); i <= lineOf(snip.End.Byte) && i < len(starts); i++ {
		end := len(src)
		if i+1 < len(starts) {
			end = starts[i+1] - 1 // the newline
		}
		line := src[starts[i]:end]
		line = bytes.TrimSuffix(line, []byte{'\n'})
		line = bytes.TrimSuffix(line, []byte{'\r'})
		lineRange := hcl.Range{Filename: d.Subject.Filename,
			Start: hcl.Pos{Byte: starts[i]}, End: hcl.Pos{Byte: starts[i] + len(line)}}
		if lineRange.Overlaps(snip) {
			fmt.Fprintf(buf, "%4d: %s\n", i+1, line)
		}
	}
	buf.WriteByte('\n')
	if d.Detail != "" {
		fmt.Fprintf(buf, "%s\n\n", d.Detail)
	}
}
