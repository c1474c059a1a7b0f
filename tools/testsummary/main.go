// Command testsummary reads `go test -json` on its standard input and
// prints what a reader of `make test` needs: a line per package (ok, FAIL
// or no test files, as go test prints them), the output of every failed
// test and of every package that failed or did not build, and at the end a
// summary of every skipped test (package, test, reason) and of every
// failure. It exits 1 when a test or a package failed, a build failed, or
// the stream ended before a package finished, so a pipeline ending in it
// fails even without pipefail.
//
//	go test -json ./... | testsummary
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

func main() {
	if !summarize(os.Stdin, os.Stdout) {
		os.Exit(1)
	}
}

// event is one line of `go test -json`: a test event (cmd/test2json) or,
// for a package that does not build, a build event (go help buildjson).
type event struct {
	Action      string
	Package     string
	Test        string
	Elapsed     float64
	Output      string
	FailedBuild string
	ImportPath  string
}

// test is what was seen of one test.
type test struct {
	name   string
	output strings.Builder
	result string // pass, fail or skip; "" while it runs
}

// pkg is what was seen of one package.
type pkg struct {
	output strings.Builder // output not attributed to a test
	tests  map[string]*test
	order  []*test // in the order they started
	done   bool
}

// skipped and failed are the summary's rows.
type row struct{ pkg, test, reason string }

type summary struct {
	w        io.Writer
	pkgs     map[string]*pkg
	order    []string
	builds   map[string]*strings.Builder
	skipped  []row
	failed   []row
	counts   map[string]int // tests by result
	pkgFails int
	pkgOK    int
}

// summarize reads the stream from r, writes to w, and reports whether
// everything passed.
func summarize(r io.Reader, w io.Writer) bool {
	s := &summary{w: w, pkgs: map[string]*pkg{}, builds: map[string]*strings.Builder{}, counts: map[string]int{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
	sawEvent := false
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil || ev.Action == "" {
			// Not an event: the go command's own words (say, a
			// module download error). Shown as is.
			fmt.Fprintf(w, "%s\n", line)
			continue
		}
		sawEvent = true
		s.handle(ev)
	}
	ok := true
	if err := sc.Err(); err != nil {
		fmt.Fprintf(w, "testsummary: reading the test stream: %v\n", err)
		ok = false
	}
	if !sawEvent {
		fmt.Fprintln(w, "testsummary: no test events in the input (was it `go test -json`?)")
		ok = false
	}
	return s.finish() && ok
}

func (s *summary) pkg(name string) *pkg {
	p := s.pkgs[name]
	if p == nil {
		p = &pkg{tests: map[string]*test{}}
		s.pkgs[name] = p
		s.order = append(s.order, name)
	}
	return p
}

func (s *summary) handle(ev event) {
	switch ev.Action {
	case "build-output":
		b := s.builds[ev.ImportPath]
		if b == nil {
			b = &strings.Builder{}
			s.builds[ev.ImportPath] = b
		}
		b.WriteString(ev.Output)
		return
	case "build-fail":
		if b := s.builds[ev.ImportPath]; b != nil {
			fmt.Fprint(s.w, b.String())
			delete(s.builds, ev.ImportPath)
		}
		s.failed = append(s.failed, row{pkg: ev.ImportPath, reason: "build failed"})
		return
	}
	p := s.pkg(ev.Package)
	if ev.Test == "" {
		switch ev.Action {
		case "output":
			p.output.WriteString(ev.Output)
		case "pass", "skip":
			p.done = true
			s.pkgOK++
			s.printLines(p.output.String(), func(l string) bool {
				return strings.HasPrefix(l, "ok ") || strings.HasPrefix(l, "ok\t") || strings.HasPrefix(l, "? ")
			})
		case "fail":
			p.done = true
			s.pkgFails++
			s.printFailedPackage(ev.Package, p, ev.FailedBuild)
		}
		return
	}
	t := p.tests[ev.Test]
	if t == nil {
		t = &test{name: ev.Test}
		p.tests[ev.Test] = t
		p.order = append(p.order, t)
	}
	switch ev.Action {
	case "output":
		t.output.WriteString(ev.Output)
	case "pass", "fail", "skip":
		t.result = ev.Action
		s.counts[ev.Action]++
		switch ev.Action {
		case "skip":
			s.skipped = append(s.skipped, row{ev.Package, ev.Test, skipReason(t.output.String())})
		case "fail":
			s.failed = append(s.failed, row{pkg: ev.Package, test: ev.Test})
		}
	}
}

// printFailedPackage prints a failed package's failed (or unfinished)
// tests' output, then its own output (a panic, a timeout, the FAIL line).
func (s *summary) printFailedPackage(name string, p *pkg, failedBuild string) {
	for _, t := range p.order {
		if t.result == "fail" || t.result == "" {
			s.printTest(t)
		}
		if t.result == "" {
			s.failed = append(s.failed, row{pkg: name, test: t.name, reason: "did not finish"})
		}
	}
	switch {
	case failedBuild != "":
		if !hasFailedRow(s.failed, failedBuild) {
			s.failed = append(s.failed, row{pkg: failedBuild, reason: "build failed"})
		}
	case !hasFailedRow(s.failed, name):
		s.failed = append(s.failed, row{pkg: name, reason: "package failed"})
	}
	s.printLines(p.output.String(), notProgress)
}

// printTest prints a failed test's output as go test does without -v: its
// "--- FAIL: name (time)" line first, then what it logged. (-json prints
// that line last, after the test's subtests.)
func (s *summary) printTest(t *test) {
	var head, body []string
	for _, l := range strings.Split(strings.TrimRight(t.output.String(), "\n"), "\n") {
		switch trimmed := strings.TrimLeft(l, " "); {
		case l == "" || strings.HasPrefix(trimmed, "=== "):
		case strings.HasPrefix(trimmed, "--- "):
			head = append(head, trimmed)
		default:
			body = append(body, l)
		}
	}
	if len(head) == 0 {
		head = []string{"--- " + t.name + " (did not finish)"}
	}
	for _, l := range append(head, body...) {
		fmt.Fprintln(s.w, l)
	}
}

func hasFailedRow(rows []row, pkg string) bool {
	for _, r := range rows {
		if r.pkg == pkg {
			return true
		}
	}
	return false
}

// notProgress drops the lines that -json's implied -v adds (=== RUN and
// the like): what is left reads as go test's usual failure output.
func notProgress(l string) bool { return !strings.HasPrefix(strings.TrimLeft(l, " "), "=== ") }

func (s *summary) printLines(out string, keep func(string) bool) {
	for _, l := range strings.SplitAfter(out, "\n") {
		if l != "" && keep(strings.TrimRight(l, "\n")) {
			if !strings.HasSuffix(l, "\n") {
				l += "\n"
			}
			fmt.Fprint(s.w, l)
		}
	}
}

// skipReason is what a skipped test printed, without the === and --- SKIP
// lines: the t.Skip message, with the file:line it came from.
func skipReason(out string) string {
	var parts []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "=== ") || strings.HasPrefix(l, "--- SKIP") {
			continue
		}
		parts = append(parts, l)
	}
	if len(parts) == 0 {
		return "(no reason given)"
	}
	return strings.Join(parts, " / ")
}

// finish prints the summary and reports whether everything passed.
func (s *summary) finish() bool {
	for _, name := range s.order {
		if p := s.pkgs[name]; !p.done {
			fmt.Fprintf(s.w, "%s: the test stream ended before the package finished\n", name)
			s.printFailedPackage(name, p, "")
			s.pkgFails++
		}
	}
	// Build output never followed by build-fail: still worth seeing.
	var leftover []string
	for ip := range s.builds {
		leftover = append(leftover, ip)
	}
	sort.Strings(leftover)
	for _, ip := range leftover {
		fmt.Fprint(s.w, s.builds[ip].String())
	}

	fmt.Fprintf(s.w, "\n=== Skipped tests: %d\n", len(s.skipped))
	sort.SliceStable(s.skipped, func(i, j int) bool { return s.skipped[i].pkg < s.skipped[j].pkg })
	for _, r := range s.skipped {
		fmt.Fprintf(s.w, "SKIP %s %s: %s\n", r.pkg, r.test, r.reason)
	}
	ok := len(s.failed) == 0 && s.pkgFails == 0
	fmt.Fprintf(s.w, "=== Tests: %d passed, %d failed, %d skipped; packages: %d ok, %d failed\n",
		s.counts["pass"], s.counts["fail"], s.counts["skip"], s.pkgOK, s.pkgFails)
	if !ok {
		fmt.Fprintln(s.w, "=== FAILED:")
		for _, r := range s.failed {
			line := "FAIL " + r.pkg
			if r.test != "" {
				line += " " + r.test
			}
			if r.reason != "" {
				line += " (" + r.reason + ")"
			}
			fmt.Fprintln(s.w, line)
		}
	}
	return ok
}
