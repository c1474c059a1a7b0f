package runner

import (
	"bytes"
	"context"
	"crypto/rand"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

// received reassembles the files a collection sends, checking that each
// comes once, in consecutive chunks from offset 0 to its final one.
type received struct {
	t      *testing.T
	files  map[string][]byte
	modes  map[string]fs.FileMode
	order  []string
	open   string
	chunks int
}

func (r *received) send(path string, mode fs.FileMode, off int64, data []byte, final bool) error {
	r.t.Helper()
	if len(data) > FileChunkSize {
		r.t.Fatalf("%s: chunk of %d bytes", path, len(data))
	}
	r.chunks++
	if r.open == "" {
		if _, dup := r.files[path]; dup {
			r.t.Fatalf("%s sent twice", path)
		}
		r.open = path
		r.order = append(r.order, path)
		r.files[path] = []byte{}
	}
	if path != r.open || off != int64(len(r.files[path])) {
		r.t.Fatalf("chunk of %s at %d while %s is at %d", path, off, r.open, len(r.files[r.open]))
	}
	r.files[path] = append(r.files[path], data...)
	r.modes[path] = mode
	if final {
		r.open = ""
	}
	return nil
}

func TestCollect(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	ws := filepath.Join(root, "job", "1")
	big := make([]byte, 2*FileChunkSize+123)
	_, _ = rand.Read(big)
	write := func(name string, data []byte, mode os.FileMode) {
		p := filepath.Join(ws, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("dist/app.tar.gz", []byte("app"), 0o644)
	write("dist/lib.tar.gz", []byte("lib"), 0o600)
	write("dist/notes.txt", []byte("not matched"), 0o644)
	write("dist/sub/deep.tar.gz", []byte("deep"), 0o644)
	write("a/b/c/report.xml", []byte("<r/>"), 0o644)
	write("report.xml", []byte("<top/>"), 0o644)
	write("bin/tool", big, 0o755)
	write("empty", nil, 0o644)
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"links/in":         "../report.xml",
		"links/out":        filepath.Join(outside, "secret"),
		"links/up":         "../../../../" + filepath.Base(outside) + "/secret",
		"outdir":           outside,
		"dist/loop.tar.gz": "loop.tar.gz",
	} {
		if err := os.MkdirAll(filepath.Join(ws, filepath.Dir(link)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(ws, link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(ws, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}

	r := &received{t: t, files: map[string][]byte{}, modes: map[string]fs.FileMode{}}
	patterns := []string{"dist/*.tar.gz", "**/report.xml", "bin/tool", "empty", "nothing/*.xml", "gone.txt",
		"links/*", "outdir/*", "fifo", "../x", "/etc/passwd", "dist", "a//b"}
	res, err := Collect(context.Background(), root, "job/1", patterns, r.send)
	if err != nil {
		t.Fatal(err)
	}
	wantOrder := []string{"a/b/c/report.xml", "bin/tool", "dist/app.tar.gz", "dist/lib.tar.gz", "empty", "links/in", "report.xml"}
	if !reflect.DeepEqual(r.order, wantOrder) {
		t.Errorf("sent %q, want %q", r.order, wantOrder)
	}
	if r.open != "" {
		t.Errorf("%s never got its final chunk", r.open)
	}
	for name, want := range map[string][]byte{"bin/tool": big, "empty": {}, "links/in": []byte("<top/>"), "dist/lib.tar.gz": []byte("lib")} {
		if !bytes.Equal(r.files[name], want) {
			t.Errorf("%s: %d bytes, want %d", name, len(r.files[name]), len(want))
		}
	}
	if r.modes["bin/tool"] != 0o755 || r.modes["dist/lib.tar.gz"] != 0o600 {
		t.Errorf("modes %v", r.modes)
	}
	if res.Files != len(wantOrder) || res.Bytes != int64(len(big))+3+3+4+6+6 {
		t.Errorf("counted %d files, %d bytes", res.Files, res.Bytes)
	}
	if want := []string{"nothing/*.xml", "gone.txt"}; !reflect.DeepEqual(res.Missing, want) {
		t.Errorf("missing %q, want %q", res.Missing, want)
	}
	refused := strings.Join(res.Refused, "\n")
	for _, want := range []string{
		"links/out: not sent: it leads outside the workspace",
		"links/up: not sent: it leads outside the workspace",
		"outdir: not sent: it leads outside the workspace",
		"dist/loop.tar.gz: not sent:",
		"fifo: not sent: not a regular file",
		"../x: not a relative",
		"/etc/passwd: not a relative",
		"a//b: not a relative",
		"dist: not sent: a directory (dist/** sends what it holds)",
	} {
		if !strings.Contains(refused, want) {
			t.Errorf("refusals lack %q:\n%s", want, refused)
		}
	}
	if strings.Contains(strings.Join(r.order, " "), "secret") || len(res.Refused) != 9 {
		t.Errorf("%d refusals:\n%s", len(res.Refused), refused)
	}
}

func TestCollectCancelled(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Collect(ctx, root, "", []string{"*"}, func(string, fs.FileMode, int64, []byte, bool) error { return nil }); err == nil {
		t.Fatal("a cancelled collection succeeded")
	}
}

func TestMatchSegs(t *testing.T) {
	for _, tc := range []struct {
		pat, name string
		want      bool
	}{
		{"*.txt", "a.txt", true},
		{"*.txt", "d/a.txt", false},
		{"**/*.txt", "a.txt", true},
		{"**/*.txt", "d/e/a.txt", true},
		{"d/**", "d/e/f", true},
		{"d/**/f", "d/f", true},
		{"d/**/f", "d/x/y/f", true},
		{"d/**/f", "e/x/f", false},
		{"[ab]?.log", "b1.log", true},
	} {
		if got := matchSegs(strings.Split(tc.pat, "/"), strings.Split(tc.name, "/")); got != tc.want {
			t.Errorf("match(%q, %q) = %v", tc.pat, tc.name, got)
		}
	}
}
