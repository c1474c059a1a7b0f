package report

import (
	"errors"
	"strings"
)

// The markers around the generated section of a document.
const (
	BeginMarker = "<!-- conveyor-bench: generated, begin -->"
	EndMarker   = "<!-- conveyor-bench: generated, end -->"
)

// Splice puts generated between the markers of doc, keeping the rest of
// doc (the analysis written around the numbers). An empty doc becomes a
// new document holding only the generated section; a doc without markers
// gets the section appended.
func Splice(doc, generated string) (string, error) {
	section := BeginMarker + "\n" + strings.TrimRight(generated, "\n") + "\n" + EndMarker
	if strings.TrimSpace(doc) == "" {
		return "# Performance\n\n" + section + "\n", nil
	}
	i := strings.Index(doc, BeginMarker)
	j := strings.Index(doc, EndMarker)
	switch {
	case i < 0 && j < 0:
		return strings.TrimRight(doc, "\n") + "\n\n" + section + "\n", nil
	case i < 0 || j < i:
		return "", errors.New("the generated section's markers are broken: fix or remove them")
	}
	return doc[:i] + section + doc[j+len(EndMarker):], nil
}
