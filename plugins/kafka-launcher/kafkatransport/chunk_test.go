package kafkatransport

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func newReassembler(max int) *reassembler {
	return &reassembler{max: max, log: hclog.NewNullLogger()}
}

func TestChunksRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, ChunkSize - 1, ChunkSize, ChunkSize + 1, 3*ChunkSize + 17} {
		frame := make([]byte, size)
		for i := range frame {
			frame[i] = byte(i * 7)
		}
		r := newReassembler(MaxFrameSize)
		cs := chunks(frame, 42)
		if want := max(1, (size+ChunkSize-1)/ChunkSize); len(cs) != want {
			t.Fatalf("size %d: %d chunks, want %d", size, len(cs), want)
		}
		for i, c := range cs {
			if len(c) > chunkHeaderSize+ChunkSize {
				t.Fatalf("chunk of %d bytes", len(c))
			}
			got, done := r.add(c, int64(i))
			if done != (i == len(cs)-1) {
				t.Fatalf("size %d: chunk %d done=%v", size, i, done)
			}
			if done && !bytes.Equal(got, frame) {
				t.Fatalf("size %d: frame differs", size)
			}
		}
		if r.malformed.Load() != 0 {
			t.Fatalf("size %d: %d malformed", size, r.malformed.Load())
		}
	}
}

func TestReassemblerMalformed(t *testing.T) {
	r := newReassembler(3 * ChunkSize)
	big := chunks(make([]byte, 2*ChunkSize+5), 1)
	good := chunks([]byte("good"), 2)
	oversized := chunks(make([]byte, 4*ChunkSize), 3)

	// A sender died after the first chunk: the next frame replaces it.
	if _, done := r.add(big[0], 0); done {
		t.Fatal("partial frame completed")
	}
	if got, done := r.add(good[0], 1); !done || string(got) != "good" {
		t.Fatalf("got %q %v", got, done)
	}
	if r.malformed.Load() != 1 {
		t.Fatalf("malformed %d, want 1", r.malformed.Load())
	}
	// Out-of-sequence, short, foreign records are dropped.
	for _, v := range [][]byte{big[1], nil, []byte("short"), append([]byte{9}, good[0][1:]...)} {
		if _, done := r.add(v, 2); done {
			t.Fatal("garbage completed a frame")
		}
	}
	// An oversized frame is refused once, its chunks skipped.
	before := r.malformed.Load()
	for i, c := range oversized {
		if _, done := r.add(c, int64(10+i)); done {
			t.Fatal("oversized frame completed")
		}
	}
	if r.malformed.Load() != before+1 {
		t.Fatalf("oversized frame counted %d times", r.malformed.Load()-before)
	}
	// A lying length is caught.
	lie := appendChunkHeader(nil, true, 0, 10, 5)
	if _, done := r.add(append(lie, "abc"...), 20); done {
		t.Fatal("short single chunk accepted")
	}
	if got, done := r.add(good[0], 21); !done || string(got) != "good" {
		t.Fatal("reassembler did not recover")
	}
	// Random garbage never panics.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		v := make([]byte, rng.IntN(64))
		for i := range v {
			v[i] = byte(rng.IntN(4))
		}
		if len(v) > 0 {
			v[0] = chunkVersion
		}
		r.add(v, 0)
	}
	if r.active && len(r.buf) > r.total {
		t.Fatal("buffer exceeds its frame length")
	}
}

func TestRecordsRoundTrip(t *testing.T) {
	small := []byte("a frame")
	recs := Records(small, 7)
	if len(recs) != 1 {
		t.Fatalf("%d records for a small frame", len(recs))
	}
	if got, ok := RecordFrame(recs[0]); !ok || string(got) != string(small) {
		t.Fatalf("RecordFrame = %q, %v", got, ok)
	}
	big := make([]byte, ChunkSize+1)
	recs = Records(big, 8)
	if len(recs) != 2 {
		t.Fatalf("%d records for a frame of ChunkSize+1 bytes", len(recs))
	}
	for i, r := range recs {
		if _, ok := RecordFrame(r); ok {
			t.Errorf("record %d of a split frame taken for a whole frame", i)
		}
	}
	if _, ok := RecordFrame([]byte("garbage")); ok {
		t.Error("garbage taken for a frame")
	}
}
