package buildlog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"path/filepath"
	"strings"
	"sync"
	"testing"
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
