//go:build linux

package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/conveyor-ci/conveyor/core/client"
	"github.com/conveyor-ci/conveyor/core/store"
)

// TestDownloadModeUmask: conveyor artifacts -o creates each file with its
// recorded mode masked by the umask, as any file the user creates: a
// -rwxrwxrwx artifact does not land world-writable, setuid is dropped and
// a read-only artifact still downloads.
func TestDownloadModeUmask(t *testing.T) {
	const content = "artifact content\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(content))
	}))
	defer srv.Close()
	sum := sha256.Sum256([]byte(content))
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	dir := t.TempDir()
	c := client.New(srv.URL)
	for _, tc := range []struct {
		path string
		mode uint32
		want fs.FileMode
	}{
		{"all.sh", 0o777, 0o755},
		{"group/w.txt", 0o666, 0o644},
		{"ro.txt", 0o444, 0o444},
		{"suid", 0o4777, 0o755},
		{"private", 0o600, 0o600},
	} {
		a := store.Artifact{Path: tc.path, Size: int64(len(content)), Mode: tc.mode, SHA256: hex.EncodeToString(sum[:])}
		if err := download(context.Background(), c, "job", 1, a, dir); err != nil {
			t.Fatalf("download %s: %v", tc.path, err)
		}
		// Again over the first: a kept file is replaced, not left as it was.
		if err := download(context.Background(), c, "job", 1, a, dir); err != nil {
			t.Fatalf("download %s again: %v", tc.path, err)
		}
		fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(tc.path)))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != tc.want {
			t.Errorf("%s recorded %04o downloaded as %v, want %v", tc.path, tc.mode, fi.Mode(), tc.want)
		}
	}
}
