package runner

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"strings"
	"testing"
	"time"
)

// TestRunStdin: Spec.Stdin is the step's standard input, closed at its
// end; a step that does not read it, or stops early, still ends.
func TestRunStdin(t *testing.T) {
	big := make([]byte, 3<<20+17)
	_, _ = rand.Read(big)
	sum := sha256.Sum256(big)
	for _, tc := range []struct {
		name   string
		cmd    string
		stdin  func() io.Reader
		stdout string
	}{
		{name: "cat", cmd: "cat", stdin: func() io.Reader { return strings.NewReader("hello\nno newline") }, stdout: "hello\nno newline"},
		{name: "a pipe, not /dev/null", cmd: "test -p /dev/stdin && echo pipe", stdin: func() io.Reader { return strings.NewReader("") }, stdout: "pipe\n"},
		{name: "empty", cmd: "wc -c", stdin: func() io.Reader { return strings.NewReader("") }, stdout: "0\n"},
		{name: "large", cmd: "sha256sum | cut -d' ' -f1", stdin: func() io.Reader { return bytes.NewReader(big) }, stdout: hex.EncodeToString(sum[:]) + "\n"},
		{name: "stops reading early", cmd: "head -c 5", stdin: func() io.Reader { return bytes.NewReader(big) }, stdout: string(big[:5])},
		{name: "never reads, input never ends", cmd: "echo done", stdin: func() io.Reader { r, _ := io.Pipe(); return r }, stdout: "done\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCollector()
			done := make(chan Result, 1)
			go func() {
				done <- Run(context.Background(), Spec{Command: tc.cmd, Root: t.TempDir(), Stdin: tc.stdin(), Grace: time.Second}, c.write)
			}()
			var res Result
			select {
			case res = <-done:
			case <-time.After(time.Minute):
				t.Fatal("the step did not end")
			}
			if res.Code != 0 || res.Error != "" {
				t.Fatalf("result %+v (stderr %q)", res, c.stderr())
			}
			if got := c.stdout(); got != tc.stdout {
				t.Errorf("stdout %q, want %q", trim(got), trim(tc.stdout))
			}
		})
	}
}

func trim(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
