package buildlog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/conveyor-ci/conveyor/core/internal/tmpfstest"
)

func TestFollowLiveFromOffsets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "job", "1.log")
	l, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	chunk := []byte(strings.Repeat("0123456789abcdef", 4096)) // 64 KiB

	// Followers start before anything is written, at 0 and at an offset.
	offsets := []int64{0, 1, 100_000}
	got := make([]bytes.Buffer, len(offsets))
	var wg sync.WaitGroup
	for i, off := range offsets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := Follow(context.Background(), path, l, off, &got[i], nil); err != nil {
				t.Error(err)
			}
		}()
	}
	for i := 0; i < 48; i++ { // 3 MiB
		chunk[0] = byte(i)
		want.Write(chunk)
		if _, err := l.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, off := range offsets {
		if sha256.Sum256(got[i].Bytes()) != sha256.Sum256(want.Bytes()[off:]) {
			t.Errorf("follower at offset %d got %d bytes that differ from the log", off, got[i].Len())
		}
	}

	// A finished log is read to the end without a live handle.
	var after bytes.Buffer
	if err := Follow(context.Background(), path, nil, 5, &after, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after.Bytes(), want.Bytes()[5:]) {
		t.Fatal("reading a finished log from offset 5 differs")
	}
}

func TestFollowStopsWithContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "1.log")
	l, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Write([]byte("partial"))
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	done := make(chan error)
	go func() { done <- Follow(ctx, path, l, 0, &out, nil) }()
	cancel()
	if err := <-done; err != context.Canceled {
		t.Fatalf("Follow returned %v, want context.Canceled", err)
	}
}

// TestFullDisk: on a really full file system a write is all or nothing:
// the part the kernel took is cut again, so the log never ends in the
// middle of a write and the same bytes written again once space is back
// appear once. A note of the master's own that could not be written makes
// Close fail: the log is not complete.
func TestFullDisk(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	tmpfstest.Mount(t, dir, "1m")
	path := filepath.Join(dir, "job", "1.log")
	l, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	a := bytes.Repeat([]byte("a"), 600<<10)
	b := bytes.Repeat([]byte("b"), 600<<10)
	if _, err := l.Write(a); err != nil {
		t.Fatal(err)
	}
	n, err := l.Write(b)
	if want := "writing the log " + path + ": no space left on device"; n != 0 || err == nil || err.Error() != want || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Write on a full disk = %d, %v; want 0, %q", n, err, want)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != int64(len(a)) || l.Size() != int64(len(a)) {
		t.Fatalf("after the refused write: file %v (%v), Size() %d; want both %d", fi.Size(), err, l.Size(), len(a))
	}

	tmpfstest.Resize(t, dir, "4m")
	if _, err := l.Write(b); err != nil {
		t.Fatalf("Write once space is back: %v", err)
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, append(bytes.Clone(a), b...)) || l.Size() != int64(len(got)) {
		t.Fatalf("log: %d bytes (%v), Size() %d; want %d bytes, each write once", len(got), err, l.Size(), len(a)+len(b))
	}

	// Fill the disk: the master's note is lost, Close says so.
	filler, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	for err == nil {
		_, err = filler.Write(make([]byte, 64<<10))
	}
	filler.Close()
	l.Printf("conveyor: %s\n", strings.Repeat("note ", 2000))
	if err := l.Close(); err == nil || !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Close after a lost note = %v, want the write error naming the log", err)
	}
}
