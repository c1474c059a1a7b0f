package wire

import (
	"bytes"
	"testing"
)

func benchOutput() *Output {
	return &Output{
		BuildID:   "build-0123456789",
		StepIndex: 4,
		Stream:    StreamStdout,
		Data:      bytes.Repeat([]byte("0123456789abcdef"), 32<<10/16),
	}
}

func BenchmarkEncodeOutput(b *testing.B) {
	m := benchOutput()
	buf := Marshal(m)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		f := NewFrame(m)
		f.Session, f.Seq, f.Ack = 1, 2, 3
		buf = f.Append(buf[:0])
	}
}

func BenchmarkDecodeOutput(b *testing.B) {
	enc := Marshal(benchOutput())
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		f, err := Decode(enc, MaxFrameSize)
		if err != nil {
			b.Fatal(err)
		}
		m, err := f.Message()
		if err != nil {
			b.Fatal(err)
		}
		if len(m.(*Output).Data) != 32<<10 {
			b.Fatal("bad data length")
		}
	}
}
