package harness

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

func TestRun(t *testing.T) {
	tests := []struct {
		name    string
		fn      func(t *T)
		wantErr string
	}{
		{"passes", func(t *T) {}, ""},
		{"fatal", func(t *T) { t.Fatalf("broke at %d", 3) }, "sec: broke at 3"},
		{"skip fails the section", func(t *T) { t.Skip("no sshd") }, "sec: no sshd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var order []string
			var dir string
			var log bytes.Buffer
			err := Run("sec", &log, func(h *T) {
				dir = h.TempDir()
				h.Cleanup(func() { order = append(order, "first") })
				h.Cleanup(func() { order = append(order, "second") })
				h.Logf("hello %s", "log")
				tt.fn(h)
			})
			if (err == nil) != (tt.wantErr == "") || (err != nil && err.Error() != tt.wantErr) {
				t.Fatalf("Run = %v, want %q", err, tt.wantErr)
			}
			if strings.Join(order, ",") != "second,first" {
				t.Errorf("cleanups ran %v, want last registered first", order)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("temp dir %s not removed: %v", dir, err)
			}
			if log.String() != "hello log\n" {
				t.Errorf("log %q", log.String())
			}
		})
	}
}

func TestRunRepanicsOtherPanics(t *testing.T) {
	defer func() {
		if r := recover(); r != "boom" {
			t.Fatalf("recovered %v, want the original panic", r)
		}
	}()
	_ = Run("sec", &bytes.Buffer{}, func(*T) { panic("boom") })
}

func TestProcParsers(t *testing.T) {
	stat, err := os.ReadFile("testdata/stat")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := statCPU(stat); err != nil || got != 3250*time.Millisecond {
		t.Errorf("statCPU = %v, %v; want 3.25s", got, err)
	}
	if state, ppid, err := statParent(stat); err != nil || state != "S" || ppid != 1 {
		t.Errorf("statParent = %q, %d, %v", state, ppid, err)
	}
	if _, err := statCPU([]byte("1 (x) S 1")); err == nil {
		t.Error("statCPU of a short line: no error")
	}
	f, err := os.Open("testdata/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, err := vmRSS(f); err != nil || got != 27064<<10 {
		t.Errorf("vmRSS = %d, %v", got, err)
	}
	if n, err := RSS(os.Getpid()); err != nil || n <= 0 {
		t.Errorf("RSS(self) = %d, %v", n, err)
	}
	if _, err := CPUTime(os.Getpid()); err != nil {
		t.Errorf("CPUTime(self): %v", err)
	}
	if pid := Child("/nonexistent"); pid != 0 {
		t.Errorf("Child of a binary nobody runs = %d", pid)
	}
}
