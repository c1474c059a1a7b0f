package config

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
)

// Redact rewrites each of diags about an expression whose value was
// computed from file() or env() (tracked by a cty mark through functions
// and interpolation, see track.go): its detail becomes a value-free one
// (plainError, WithPlainDetail) naming the sources. Then, as a second net,
// it replaces, in the summary and detail of each of diags, every value
// that file() or env() returned while loading c (and DecodePlugins) by the
// name of its source, "(value from file(\"/etc/shadow\"))": a diagnostic
// names where a value came from, never what a file or an environment
// variable holds. It covers our own messages, hcl's and the plugins'
// (whose free text may quote a value): a value is found as it is, quoted
// the ways Go quotes strings, trimmed, and line by line. Values shorter than
// four characters are only found quoted, and values shorter than eight
// only as whole words, so as not to rewrite ordinary words and numbers; our
// own messages quote strings, and do not repeat numbers (executors,
// artifacts_max_mib). Load and DecodePlugins return redacted
// diagnostics; a caller making more diagnostics about the configuration
// (such as the plugins' answers) runs them through Redact. It returns
// diags, changed in place.
func (c *Config) Redact(diags hcl.Diagnostics) hcl.Diagnostics {
	if c.state == nil {
		return diags
	}
	return c.state.redact(diags)
}

// replacement is one form of a remembered value and what replaces it.
type replacement struct {
	form, with string
	word       bool // replace only where not inside a word
}

func (st *evalState) redact(diags hcl.Diagnostics) hcl.Diagnostics {
	st.redactTainted(diags)
	// Every form of a value is at least as long as the value: a value
	// longer than every message cannot be in one.
	longest := 0
	for _, d := range diags {
		if d != nil {
			longest = max(longest, len(d.Summary), len(d.Detail))
		}
	}
	st.mu.Lock()
	var reps []replacement
	for v, src := range st.secrets {
		reps = append(reps, forms(v, "(value from "+src+")", longest)...)
	}
	st.mu.Unlock()
	if len(reps) == 0 {
		return diags
	}
	// Longest first, so that a quoted form goes before the raw value it
	// holds, and a whole value before one of its lines.
	slices.SortFunc(reps, func(a, b replacement) int {
		return cmp.Or(cmp.Compare(len(b.form), len(a.form)), strings.Compare(a.form, b.form))
	})
	for _, d := range diags {
		if d == nil {
			continue
		}
		for _, r := range reps {
			d.Summary = replace(d.Summary, r)
			d.Detail = replace(d.Detail, r)
		}
	}
	return diags
}

// forms returns the forms in which v, or a part of it, could appear in a
// message of at most longest bytes.
func forms(v, with string, longest int) []replacement {
	cands := []string{v}
	if t := strings.TrimSpace(v); t != v {
		cands = append(cands, t)
	}
	if strings.Contains(v, "\n") {
		for line := range strings.SplitSeq(v, "\n") {
			if t := strings.TrimSpace(line); len(t) >= 8 {
				cands = append(cands, t)
			}
		}
	}
	var reps []replacement
	for _, x := range cands {
		if x == "" || len(x) > longest {
			continue
		}
		for _, q := range []string{strconv.Quote(x), strconv.QuoteToASCII(x), timeQuote(x)} {
			reps = append(reps, replacement{form: q, with: with})
		}
		if len(x) >= 4 {
			reps = append(reps, replacement{form: x, with: with, word: len(x) < 8})
		}
	}
	return reps
}

// replace replaces r.form in s; a word form only where the characters
// around it are no letters or digits.
func replace(s string, r replacement) string {
	if !strings.Contains(s, r.form) {
		return s
	}
	if !r.word {
		return strings.ReplaceAll(s, r.form, r.with)
	}
	var b strings.Builder
	for {
		i := strings.Index(s, r.form)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		end := i + len(r.form)
		if (i > 0 && isWordByte(s[i-1])) || (end < len(s) && isWordByte(s[end])) {
			b.WriteString(s[:i+1])
			s = s[i+1:]
			continue
		}
		b.WriteString(s[:i])
		b.WriteString(r.with)
		s = s[end:]
	}
}

func isWordByte(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// timeQuote quotes s the way the time package does in its errors
// (time.ParseDuration's `invalid duration "..."`): bytes below ' ' and
// beyond ASCII as \xNN, '"' and '\\' escaped.
func timeQuote(s string) string {
	const hex = "0123456789abcdef"
	b := []byte{'"'}
	for i, c := range s {
		if c >= utf8.RuneSelf || c < ' ' {
			width := len(string(c))
			if c == utf8.RuneError {
				width = 1
				if i+2 < len(s) && s[i:i+3] == string(utf8.RuneError) {
					width = 3
				}
			}
			for j := 0; j < width; j++ {
				b = append(b, '\\', 'x', hex[s[i+j]>>4], hex[s[i+j]&0xF])
			}
			continue
		}
		if c == '"' || c == '\\' {
			b = append(b, '\\')
		}
		b = append(b, string(c)...)
	}
	return string(append(b, '"'))
}
