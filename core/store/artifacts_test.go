package store

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/conveyor-ci/conveyor/core/internal/tmpfstest"
)

func TestArtifactWriter(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	w, err := s.NewArtifactWriter("app", 3, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 1<<20+5)
	_, _ = rand.Read(big)
	for off := 0; off < len(big); off += 300 << 10 {
		end := min(off+300<<10, len(big))
		if err := w.Chunk("dist/sub/app.bin", 0o755, int64(off), big[off:end], end == len(big)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Chunk("empty", 0o644, 0, nil, true); err != nil {
		t.Fatal(err)
	}
	list, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(big)
	empty := sha256.Sum256(nil)
	want := []Artifact{
		{Path: "dist/sub/app.bin", Size: int64(len(big)), Mode: 0o755, SHA256: hex.EncodeToString(sum[:])},
		{Path: "empty", Size: 0, Mode: 0o644, SHA256: hex.EncodeToString(empty[:])},
	}
	if len(list) != 2 || list[0] != want[0] || list[1] != want[1] {
		t.Fatalf("artifacts %+v\nwant %+v", list, want)
	}
	if dir := s.ArtifactsDir("app", 3); filepath.Dir(dir) != filepath.Dir(s.LogPath("app", 3)) {
		t.Errorf("artifacts in %s, not next to the log %s", dir, s.LogPath("app", 3))
	}
	f, err := s.OpenArtifact("app", 3, "dist/sub/app.bin")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(f)
	fi, _ := f.Stat()
	f.Close()
	if !bytes.Equal(got, big) || fi.Mode().Perm() != 0o600 {
		t.Fatalf("stored %d bytes, mode %v", len(got), fi.Mode())
	}
	for _, p := range []string{"../3.log", "/etc/passwd", "dist/../../x", "", "a//b", "./empty"} {
		if f, err := s.OpenArtifact("app", 3, p); err == nil {
			f.Close()
			t.Errorf("OpenArtifact(%q) succeeded", p)
		}
	}
}

func TestArtifactWriterRefuses(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	type chunk struct {
		path  string
		off   int64
		data  string
		final bool
	}
	for _, tc := range []struct {
		name   string
		chunks []chunk
		want   string // error of the last chunk, or of Close
	}{
		{"escaping", []chunk{{"../../x", 0, "x", true}}, "clean relative path"},
		{"absolute", []chunk{{"/tmp/x", 0, "x", true}}, "clean relative path"},
		{"unclean", []chunk{{"a/./b", 0, "x", true}}, "clean relative path"},
		{"gap", []chunk{{"a", 0, "x", false}, {"a", 2, "y", true}}, "offset 2, want 1"},
		{"not from 0", []chunk{{"a", 5, "x", true}}, "first chunk at offset 5"},
		{"twice", []chunk{{"a", 0, "x", true}, {"a", 0, "x", true}}, "sent twice"},
		{"interleaved", []chunk{{"a", 0, "x", false}, {"b", 0, "y", true}}, "b starts before its last chunk"},
		{"file under a file", []chunk{{"a", 0, "x", true}, {"a/b", 0, "y", true}}, "/a/b: mkdirat a: file exists"},
		{"incomplete", []chunk{{"a", 0, "x", false}}, "incomplete (1 bytes came)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := s.NewArtifactWriter("j", 1, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range tc.chunks {
				err = w.Chunk(c.path, 0o644, c.off, []byte(c.data), c.final)
			}
			if _, cerr := w.Close(); err == nil {
				err = cerr
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(s.ArtifactsDir("j", 1)), "..", "x")); err == nil {
				t.Fatal("a file was written outside the artifacts directory")
			}
		})
	}
}

// TestArtifactWriterLimit: a build's artifacts together may take the
// writer's limit and not a byte more; the chunk going beyond is refused
// unwritten, whichever file it belongs to.
func TestArtifactWriterLimit(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const limit = 1 << 20
	w, err := s.NewArtifactWriter("j", 1, limit)
	if err != nil {
		t.Fatal(err)
	}
	half := make([]byte, limit/2)
	if err := w.Chunk("a", 0o644, 0, half, true); err != nil {
		t.Fatal(err)
	}
	if err := w.Chunk("b", 0o644, 0, half, false); err != nil {
		t.Fatalf("exactly the limit: %v", err)
	}
	err = w.Chunk("b", 0o644, int64(len(half)), []byte{1}, true)
	if err == nil || !strings.Contains(err.Error(), "exceed their limit of 1 MiB (artifacts_max_mib)") {
		t.Fatalf("one byte over the limit: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(s.ArtifactsDir("j", 1), "b")); err != nil || fi.Size() != int64(len(half)) {
		t.Fatalf("the refused chunk was written: %v %v", fi, err)
	}
}

// TestArtifactWriterFullDisk: on a really full file system a chunk is
// written whole or not at all, and the same chunk written again once
// space is back lands once: the file and its recorded sha256 match what
// was sent.
func TestArtifactWriterFullDisk(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	disk := filepath.Dir(s.ArtifactsDir("j", 1))
	tmpfstest.Mount(t, disk, "1m")
	w, err := s.NewArtifactWriter("j", 1, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1200<<10)
	_, _ = rand.Read(data)
	first, second := data[:600<<10], data[600<<10:]
	if err := w.Chunk("out/a.bin", 0o644, 0, first, false); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(s.ArtifactsDir("j", 1), "out", "a.bin")
	err = w.Chunk("out/a.bin", 0o644, int64(len(first)), second, true)
	if want := "writing the artifact " + path + ": no space left on device"; err == nil || err.Error() != want || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Chunk on a full disk = %v, want %q", err, want)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != int64(len(first)) {
		t.Fatalf("after the refused chunk the file is %v bytes (%v), want %d", fi.Size(), err, len(first))
	}
	tmpfstest.Resize(t, disk, "4m")
	if err := w.Chunk("out/a.bin", 0o644, int64(len(first)), second, true); err != nil {
		t.Fatalf("the same chunk once space is back: %v", err)
	}
	list, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	sum := sha256.Sum256(data)
	if err != nil || !bytes.Equal(got, data) || len(list) != 1 || list[0].Size != int64(len(data)) || list[0].SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("stored %d bytes (%v), record %+v; want %d bytes, sha256 %x", len(got), err, list, len(data), sum)
	}
}

// TestArtifactWriterSyncFails: once a file's sync failed (the kernel may
// have dropped the pages it could not write), no later sync may claim the
// file durable: the same chunk again, later chunks and Close all fail with
// the first sync's error, and the file is not recorded.
func TestArtifactWriterSyncFails(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	w, err := s.NewArtifactWriter("j", 1, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	syncs := 0
	w.syncFile = func(f *os.File) error {
		syncs++
		if syncs == 1 {
			return &os.PathError{Op: "sync", Path: f.Name(), Err: syscall.EIO}
		}
		return f.Sync()
	}
	path := filepath.Join(s.ArtifactsDir("j", 1), "a.bin")
	want := "syncing the artifact " + path + ": input/output error"
	for i, chunk := range []func() error{
		func() error { return w.Chunk("a.bin", 0o644, 0, []byte("data"), true) },
		func() error { return w.Chunk("a.bin", 0o644, 0, []byte("data"), true) }, // retried by the session
		func() error { return w.Chunk("b.bin", 0o644, 0, []byte("more"), true) },
	} {
		if err := chunk(); err == nil || err.Error() != want || !errors.Is(err, syscall.EIO) {
			t.Fatalf("chunk %d = %v, want %q", i, err, want)
		}
	}
	list, err := w.Close()
	if err == nil || !strings.Contains(err.Error(), want) || len(list) != 0 {
		t.Fatalf("Close = %+v, %v; want no artifact and %q", list, err, want)
	}
	if syncs != 1 {
		t.Errorf("%d syncs, want the failed one only", syncs)
	}
}
