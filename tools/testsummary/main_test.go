package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// The testdata streams are real `go test -json` output: mixed.json from
// packages with a passing, a skipped and a failing test (with passing,
// failing and skipped subtests), a passing package and one that does not
// compile; panic.json from a test that panics.
func TestSummarize(t *testing.T) {
	mixed := readFile(t, "testdata/mixed.json")
	// The stream cut off while example.com/m/b ran (its "start" and
	// "run" seen, not its end).
	var cut []string
	for _, l := range strings.SplitAfter(mixed, "\n") {
		cut = append(cut, l)
		if strings.Contains(l, `"Action":"run","Package":"example.com/m/b"`) {
			break
		}
	}
	for _, tc := range []struct {
		name, in string
		wantOK   bool
		want     []string
		notWant  []string
	}{
		{"mixed", mixed, false, []string{
			// Package lines, as go test prints them.
			"FAIL\texample.com/m/a\t", "ok  \texample.com/m/b\t", "FAIL\texample.com/m/c [build failed]",
			// The failed tests' output, their --- FAIL line first.
			"--- FAIL: TestFail/bad (0.00s)\n    a_test.go:11: got 1, want 2\n",
			// The compiler's error.
			"c/c_test.go:5:33: undefined: undefined",
			// The skip summary: package, test, reason.
			"=== Skipped tests: 2\n",
			"SKIP example.com/m/a TestSkip: a_test.go:7: sshd is missing: apt-get install openssh-server\n",
			"SKIP example.com/m/a TestFail/skipped: a_test.go:12: needs root\n",
			"=== Tests: 3 passed, 2 failed, 2 skipped; packages: 1 ok, 2 failed\n",
			"FAIL example.com/m/a TestFail/bad\n",
			"FAIL example.com/m/c [example.com/m/c.test] (build failed)\n",
		}, []string{
			"=== RUN", "--- PASS", "a_test.go:5", // a passing test's output stays quiet
			"FAIL example.com/m/c (package failed)", // one row per build failure
		}},
		{"panic", readFile(t, "testdata/panic.json"), false, []string{
			"--- FAIL: TestPanics (0.00s)\n    p_test.go:8: about to panic\npanic: assignment to entry in nil map",
			"FAIL\texample.com/m/p\t",
			"=== Skipped tests: 0\n",
			"FAIL example.com/m/p TestPanics\n",
		}, nil},
		{"passing package only", onlyPackage(mixed, "example.com/m/b"), true, []string{
			"ok  \texample.com/m/b\t",
			"=== Skipped tests: 0\n=== Tests: 1 passed, 0 failed, 0 skipped; packages: 1 ok, 0 failed\n",
		}, []string{"FAILED"}},
		{"stream cut off", strings.Join(cut, ""), false, []string{
			"example.com/m/b: the test stream ended before the package finished",
			"--- TestOK (did not finish)",
			"FAIL example.com/m/b TestOK (did not finish)\n",
		}, nil},
		{"not go test -json", "go: cannot find main module\n", false, []string{
			"go: cannot find main module\n", "no test events in the input",
		}, nil},
		{"empty", "", false, []string{"no test events in the input"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			ok := summarize(strings.NewReader(tc.in), &out)
			if ok != tc.wantOK {
				t.Errorf("summarize = %v, want %v", ok, tc.wantOK)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q", w)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(out.String(), w) {
					t.Errorf("output has %q", w)
				}
			}
			if t.Failed() {
				t.Logf("output:\n%s", out.String())
			}
		})
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// onlyPackage keeps the stream's events about one package.
func onlyPackage(stream, pkg string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(stream, "\n") {
		if strings.Contains(l, `"Package":"`+pkg+`"`) {
			b.WriteString(l)
		}
	}
	return b.String()
}
