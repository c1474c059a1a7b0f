package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
)

// messageCase is one message for round-trip tests. want is the expected
// decoding when it differs from in (empty slices decode as nil).
type messageCase struct {
	name string
	in   Message
	want Message
}

func (c messageCase) expected() Message {
	if c.want != nil {
		return c.want
	}
	return c.in
}

func messageCases() []messageCase {
	binary := []byte{0, 1, 2, 0x7f, 0x80, 0xfe, 0xff}
	invalidUTF8 := "\xff\xfe\x00tail"
	long := strings.Repeat("x", 300) // length needs a 2-byte uvarint
	return []messageCase{
		{name: "Hello/zero", in: &Hello{}},
		{name: "Hello/full", in: &Hello{
			Node: "agent-7", AgentVersion: "1.4.2", OS: "linux", Arch: "arm64",
			Nonce: bytes.Repeat([]byte{0xab}, 32), Resume: true, LastSeq: math.MaxUint64,
		}},
		{name: "Hello/empty-nonce", in: &Hello{Node: "n", Nonce: []byte{}}, want: &Hello{Node: "n"}},
		{name: "Challenge/zero", in: &Challenge{}},
		{name: "Challenge/full", in: &Challenge{Nonce: binary, Proof: bytes.Repeat([]byte{1}, 32)}},
		{name: "Challenge/empty-proof", in: &Challenge{Nonce: []byte{9}, Proof: []byte{}}, want: &Challenge{Nonce: []byte{9}}},
		{name: "Auth/zero", in: &Auth{}},
		{name: "Auth/full", in: &Auth{Proof: binary}},
		{name: "AuthResult/zero", in: &AuthResult{}},
		{name: "AuthResult/ok", in: &AuthResult{OK: true, Session: 0xdeadbeefcafe}},
		{name: "AuthResult/denied", in: &AuthResult{Reason: "bad proof: " + invalidUTF8}},
		{name: "RunStep/zero", in: &RunStep{}},
		{name: "RunStep/full", in: &RunStep{
			BuildID: "b-123", StepIndex: math.MaxUint32, StepName: "test", Command: "go test ./...",
			Env: []EnvVar{
				{Name: "Z", Value: "last-first"},
				{Name: "A", Value: ""},
				{Name: "", Value: "empty name"},
				{Name: "Z", Value: "duplicate kept"},
			},
			Workdir: "/work", TimeoutMillis: 3_600_000,
		}},
		{name: "RunStep/empty-env", in: &RunStep{BuildID: "b", Env: []EnvVar{}}, want: &RunStep{BuildID: "b"}},
		{name: "RunStep/long-command", in: &RunStep{Command: long}},
		{name: "RunStep/shell", in: &RunStep{BuildID: "b", Command: "echo $0", Shell: []string{"bash", "-l", "-c"}}},
		{name: "RunStep/empty-shell", in: &RunStep{BuildID: "b", Shell: []string{}}, want: &RunStep{BuildID: "b"}},
		{name: "Stdin/zero", in: &Stdin{}},
		{name: "Stdin/data", in: &Stdin{BuildID: "b", Data: binary}},
		{name: "Stdin/eof", in: &Stdin{BuildID: "b", Data: []byte{}, EOF: true}, want: &Stdin{BuildID: "b", EOF: true}},
		{name: "Output/stdout", in: &Output{BuildID: "b", StepIndex: 3, Stream: StreamStdout, Data: []byte("hello\n")}},
		{name: "Output/stderr", in: &Output{BuildID: "b", Stream: StreamStderr, Data: bytes.Repeat(binary, 100)}},
		{name: "Output/empty", in: &Output{Stream: StreamStdout, Data: []byte{}}, want: &Output{Stream: StreamStdout}},
		{name: "Exit/zero", in: &Exit{}},
		{name: "Exit/fail", in: &Exit{BuildID: "b", StepIndex: 1, Code: 127, Error: "exec: not found"}},
		{name: "Exit/min", in: &Exit{Code: math.MinInt32}},
		{name: "Exit/max", in: &Exit{Code: math.MaxInt32}},
		{name: "Exit/minus-one", in: &Exit{Code: -1}},
		{name: "Cancel/zero", in: &Cancel{}},
		{name: "Cancel/full", in: &Cancel{BuildID: "b", Reason: "user request"}},
		{name: "Ping/zero", in: &Ping{}},
		{name: "Ping/max", in: &Ping{Nonce: math.MaxUint64, UnixNano: math.MaxInt64}},
		{name: "Ping/min", in: &Ping{Nonce: 1, UnixNano: math.MinInt64}},
		{name: "Pong/zero", in: &Pong{}},
		{name: "Pong/full", in: &Pong{Nonce: 42, UnixNano: 1_700_000_000_000_000_000}},
		{name: "FileChunk/zero", in: &FileChunk{}},
		{name: "FileChunk/full", in: &FileChunk{
			BuildID: "b", Path: "out/bin/app", Mode: 0o755, Offset: 1 << 40, Data: binary, Final: true,
		}},
		{name: "FileChunk/max-mode", in: &FileChunk{Mode: math.MaxUint32}},
		{name: "Ack/zero", in: &Ack{}},
		{name: "Ack/max", in: &Ack{Seq: math.MaxUint64}},
		{name: "Close/zero", in: &Close{}},
		{name: "Close/full", in: &Close{Reason: "shutting down"}},
		{name: "Collect/zero", in: &Collect{}},
		{name: "Collect/full", in: &Collect{BuildID: "app#7", StepIndex: 3, Workdir: "app/7",
			Patterns: []string{"dist/*.tar.gz", "**/report.xml", "", invalidUTF8, long}}},
		{name: "Collect/empty-patterns", in: &Collect{BuildID: "b", Patterns: []string{}}, want: &Collect{BuildID: "b"}},
		{name: "Stats/zero", in: &Stats{}},
		{name: "Stats/full", in: &Stats{Counters: []Counter{{Name: "forged", Value: 3}, {Name: "", Value: math.MaxUint64}}}},
		{name: "Stats/empty-counters", in: &Stats{Counters: []Counter{}}, want: &Stats{}},
	}
}

func TestMessageCasesCoverAllTypes(t *testing.T) {
	seen := map[Type]bool{}
	for _, c := range messageCases() {
		seen[c.in.Type()] = true
	}
	for typ := TypeHello; typ <= TypeStats; typ++ {
		if !seen[typ] {
			t.Errorf("no round-trip case for %v", typ)
		}
	}
}

type header struct {
	name              string
	session, seq, ack uint64
	mac               []byte
	extraFlags        Flags
}

var headers = []header{
	{name: "zero"},
	{name: "values", session: 0x0102030405060708, seq: 9, ack: 8},
	{name: "max", session: math.MaxUint64, seq: math.MaxUint64, ack: math.MaxUint64},
	{name: "mac", session: 7, seq: 1, mac: bytes.Repeat([]byte{0x5a}, MACSize)},
	// A stale FlagMAC without a MAC is dropped on encoding.
	{name: "stale-flag", seq: 2, extraFlags: FlagMAC},
}

func TestRoundTrip(t *testing.T) {
	for _, c := range messageCases() {
		for _, h := range headers {
			t.Run(c.name+"/"+h.name, func(t *testing.T) {
				f := NewFrame(c.in)
				if f.Type != c.in.Type() {
					t.Fatalf("NewFrame type = %v, want %v", f.Type, c.in.Type())
				}
				if got, want := f.Flags&FlagControl != 0, c.in.Type().IsControl(); got != want {
					t.Fatalf("FlagControl = %v, want %v", got, want)
				}
				f.Session, f.Seq, f.Ack, f.MAC = h.session, h.seq, h.ack, h.mac
				f.Flags |= h.extraFlags
				enc, err := f.Encode()
				if err != nil {
					t.Fatal(err)
				}
				if app := f.Append([]byte("prefix")); !bytes.Equal(app[6:], enc) || string(app[:6]) != "prefix" {
					t.Fatalf("Append differs from Encode")
				}
				wantLen := HeaderSize + len(f.Payload) + len(h.mac)
				if len(enc) != wantLen {
					t.Fatalf("encoded %d bytes, want %d", len(enc), wantLen)
				}
				if n := binary.BigEndian.Uint32(enc); int(n) != wantLen-4 {
					t.Fatalf("length prefix %d, want %d", n, wantLen-4)
				}

				g, m, err := Unmarshal(enc)
				if err != nil {
					t.Fatal(err)
				}
				wantFlags := f.Flags &^ FlagMAC
				if h.mac != nil {
					wantFlags |= FlagMAC
				}
				if g.Type != f.Type || g.Flags != wantFlags || g.Session != h.session || g.Seq != h.seq || g.Ack != h.ack {
					t.Fatalf("header = %v %v %d %d %d, want %v %v %d %d %d",
						g.Type, g.Flags, g.Session, g.Seq, g.Ack, f.Type, wantFlags, h.session, h.seq, h.ack)
				}
				if !bytes.Equal(g.MAC, h.mac) || (h.mac == nil) != (g.MAC == nil) {
					t.Fatalf("MAC = %x, want %x", g.MAC, h.mac)
				}
				if !bytes.Equal(g.Payload, f.Payload) {
					t.Fatalf("payload = %x, want %x", g.Payload, f.Payload)
				}
				if !reflect.DeepEqual(m, c.expected()) {
					t.Fatalf("message = %#v, want %#v", m, c.expected())
				}
				if again := g.Append(nil); !bytes.Equal(again, enc) {
					t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, enc)
				}
			})
		}
	}
}

func TestMarshal(t *testing.T) {
	for _, c := range messageCases() {
		b := Marshal(c.in)
		f, m, err := Unmarshal(b)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if f.Session != 0 || f.Seq != 0 || f.Ack != 0 || f.MAC != nil {
			t.Errorf("%s: unexpected header %+v", c.name, f)
		}
		if !reflect.DeepEqual(m, c.expected()) {
			t.Errorf("%s: message = %#v, want %#v", c.name, m, c.expected())
		}
	}
}

// TestGolden pins the byte layout of version 1.
func TestGolden(t *testing.T) {
	f := NewFrame(&Exit{BuildID: "b1", StepIndex: 300, Code: -2, Error: ""})
	f.Session, f.Seq, f.Ack = 0x0102030405060708, 0x10, 0x0f
	want := []byte{
		0, 0, 0, 35, // length: 28 header bytes + 7 payload bytes
		1, byte(TypeExit), 0, 0, // version, type, flags, reserved
		1, 2, 3, 4, 5, 6, 7, 8, // session
		0, 0, 0, 0, 0, 0, 0, 0x10, // seq
		0, 0, 0, 0, 0, 0, 0, 0x0f, // ack
		2, 'b', '1', // BuildID
		0xac, 0x02, // StepIndex 300
		3, // Code -2 zigzag
		0, // Error ""
	}
	if got := f.Append(nil); !bytes.Equal(got, want) {
		t.Fatalf("encoding:\n got % x\nwant % x", got, want)
	}

	p := NewFrame(&Ping{Nonce: 1, UnixNano: -1})
	p.MAC = make([]byte, MACSize)
	got := p.Append(nil)
	if got[6] != byte(FlagMAC|FlagControl) || got[5] != 10 {
		t.Fatalf("ping header % x", got[:8])
	}
	if !bytes.Equal(got[HeaderSize:len(got)-MACSize], []byte{1, 1}) {
		t.Fatalf("ping body % x", got[HeaderSize:])
	}
}

func TestSignedBytes(t *testing.T) {
	f := NewFrame(&Output{BuildID: "b", Stream: StreamStderr, Data: []byte("oops")})
	f.Session, f.Seq, f.Ack = 1, 2, 3
	before := f.SignedBytes()
	f.MAC = bytes.Repeat([]byte{0xee}, MACSize)
	enc := f.Append(nil)
	if want := enc[4 : len(enc)-MACSize]; !bytes.Equal(before, want) {
		t.Fatalf("SignedBytes before MAC:\n got % x\nwant % x", before, want)
	}
	if after := f.SignedBytes(); !bytes.Equal(after, before) {
		t.Fatalf("SignedBytes changed after setting MAC")
	}
	g, err := Decode(enc, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := g.SignedBytes(); !bytes.Equal(got, before) {
		t.Fatalf("SignedBytes of decoded frame differs")
	}
	// The MAC covers the header: changing Seq changes the signed bytes.
	g.Seq++
	if bytes.Equal(g.SignedBytes(), before) {
		t.Fatalf("SignedBytes does not cover Seq")
	}
}

func TestEncodeErrors(t *testing.T) {
	tests := []struct {
		name string
		f    Frame
		want error
	}{
		{"short MAC", Frame{Type: TypeAck, Payload: []byte{0}, MAC: make([]byte, 31)}, ErrMalformed},
		{"long MAC", Frame{Type: TypeAck, Payload: []byte{0}, MAC: make([]byte, 33)}, ErrMalformed},
		{"reserved flag", Frame{Type: TypeAck, Flags: 1 << 2, Payload: []byte{0}}, ErrMalformed},
		{"high flag", Frame{Type: TypeAck, Flags: 0x80, Payload: []byte{0}}, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.f.Encode(); !errors.Is(err, tt.want) {
				t.Fatalf("Encode error = %v, want %v", err, tt.want)
			}
			if err := WriteFrame(io.Discard, &tt.f); !errors.Is(err, tt.want) {
				t.Fatalf("WriteFrame error = %v, want %v", err, tt.want)
			}
			defer func() {
				if recover() == nil {
					t.Fatalf("Append did not panic")
				}
			}()
			tt.f.Append(nil)
		})
	}
}

// frameBytes returns a valid encoding of a frame with the given type and
// payload, to be corrupted by tests.
func frameBytes(typ Type, payload []byte) []byte {
	return (&Frame{Type: typ, Session: 1, Seq: 2, Ack: 3, Payload: payload}).Append(nil)
}

func patch(b []byte, off int, v byte) []byte {
	b = bytes.Clone(b)
	b[off] = v
	return b
}

func TestRejects(t *testing.T) {
	valid := Marshal(&Output{BuildID: "b", StepIndex: 1, Stream: StreamStdout, Data: []byte("data")})
	withMAC := func() []byte {
		f := NewFrame(&Ack{Seq: 5})
		f.MAC = make([]byte, MACSize)
		return f.Append(nil)
	}()
	huge := binary.BigEndian.AppendUint32(nil, 0xFFFFFFFF)
	huge = append(huge, valid[4:]...)
	setLen := func(b []byte, n uint32) []byte {
		b = bytes.Clone(b)
		binary.BigEndian.PutUint32(b, n)
		return b
	}
	// maxUvarint10 is a 10-byte uvarint encoding 2^64-1; overflow sets a
	// tenth byte above 1.
	overflow := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}

	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"bad version 0", patch(valid, 4, 0), ErrVersion},
		{"bad version 2", patch(valid, 4, 2), ErrVersion},
		{"unknown type 0", patch(valid, 5, 0), ErrUnknownType},
		{"unknown type 17", patch(valid, 5, 17), ErrUnknownType},
		{"unknown type 255", patch(valid, 5, 255), ErrUnknownType},
		{"reserved flag bit 2", patch(valid, 6, 1<<2), ErrMalformed},
		{"reserved flag bit 7", patch(valid, 6, 1<<7), ErrMalformed},
		{"reserved byte", patch(valid, 7, 1), ErrMalformed},
		{"trailing byte after frame", append(bytes.Clone(valid), 0), ErrMalformed},
		{"length shorter than header", setLen(valid[:31], 27), ErrMalformed},
		{"length zero", []byte{0, 0, 0, 0}, ErrMalformed},
		{"huge declared length", huge, ErrTooLarge},
		{"huge declared length, header only", huge[:8], ErrTooLarge},
		{"MAC flag without room", patch(frameBytes(TypeAck, []byte{1}), 6, byte(FlagMAC)), ErrMalformed},
		{"MAC flag on MAC-less frame", patch(withMAC, 6, 0), ErrMalformed}, // MAC bytes become trailing body bytes
		{"empty payload", frameBytes(TypeAck, nil), ErrTruncated},
		{"trailing body byte", frameBytes(TypeAck, []byte{1, 0}), ErrMalformed},
		{"bad bool 2", frameBytes(TypeStdin, []byte{0, 0, 2}), ErrMalformed},
		{"bad bool 0xff", frameBytes(TypeAuthResult, []byte{0xff, 0, 0}), ErrMalformed},
		{"stream 0", frameBytes(TypeOutput, []byte{0, 0, 0, 0}), ErrMalformed},
		{"stream 3", frameBytes(TypeOutput, []byte{0, 0, 3, 0}), ErrMalformed},
		{"stream 256", frameBytes(TypeOutput, []byte{0, 0, 0x80, 0x02, 0}), ErrMalformed},
		{"non-minimal varint", frameBytes(TypeAck, []byte{0x80, 0x00}), ErrMalformed},
		{"non-minimal varint 1", frameBytes(TypeAck, []byte{0x81, 0x80, 0x00}), ErrMalformed},
		{"varint overflow", frameBytes(TypeAck, overflow), ErrMalformed},
		{"varint unterminated", frameBytes(TypeAck, []byte{0xff, 0xff}), ErrTruncated},
		{"uint32 overflow", frameBytes(TypeFileChunk, append([]byte{0, 0}, binary.AppendUvarint(nil, 1<<32)...)), ErrMalformed},
		{"int32 overflow", frameBytes(TypeExit, append([]byte{0, 0}, binary.AppendVarint(nil, math.MaxInt32+1)...)), ErrMalformed},
		{"int32 underflow", frameBytes(TypeExit, append([]byte{0, 0}, binary.AppendVarint(nil, math.MinInt32-1)...)), ErrMalformed},
		{"string longer than body", frameBytes(TypeClose, []byte{5, 'a'}), ErrTruncated},
		{"string length 2^63", frameBytes(TypeClose, binary.AppendUvarint(nil, 1<<63)), ErrTruncated},
		{"bytes length max", frameBytes(TypeAuth, binary.AppendUvarint(nil, math.MaxUint64)), ErrTruncated},
		{"env count max", frameBytes(TypeRunStep, append([]byte{0, 0, 0, 0}, binary.AppendUvarint(nil, math.MaxUint64)...)), ErrTruncated},
		{"env count exceeds half the rest", frameBytes(TypeRunStep, []byte{0, 0, 0, 0, 2, 0, 0, 0, 0}), ErrTruncated},
		{"shell count 0", frameBytes(TypeRunStep, []byte{0, 0, 0, 0, 0, 0, 0, 0}), ErrMalformed},
		{"shell count exceeds the rest", frameBytes(TypeRunStep, []byte{0, 0, 0, 0, 0, 0, 0, 2, 0}), ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, m, err := Unmarshal(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Unmarshal error = %v, want %v", err, tt.want)
			}
			if m != nil {
				t.Fatalf("Unmarshal returned message %#v with error", m)
			}
			// Errors from the frame layer return no frame; message
			// errors keep the frame.
			if _, derr := Decode(tt.in, 0); (derr == nil) != (f != nil) {
				t.Fatalf("Decode error %v but Unmarshal frame %v", derr, f)
			}
		})
	}
}

func TestRejectTruncatedFrame(t *testing.T) {
	for _, c := range messageCases() {
		f := NewFrame(c.in)
		f.Seq = 77
		f.MAC = make([]byte, MACSize)
		enc := f.Append(nil)
		for n := range len(enc) {
			if _, _, err := Unmarshal(enc[:n]); !errors.Is(err, ErrTruncated) {
				t.Fatalf("%s: prefix of %d/%d bytes: error = %v, want ErrTruncated", c.name, n, len(enc), err)
			}
			if _, _, err := ReadFrame(bytes.NewReader(enc[:n]), 0); n == 0 && err != io.EOF || n > 0 && err != io.ErrUnexpectedEOF {
				t.Fatalf("%s: ReadFrame of %d/%d bytes: error = %v", c.name, n, len(enc), err)
			}
		}
	}
}

// TestRejectTruncatedBody checks every strict prefix of every message body,
// framed correctly, fails with ErrTruncated; but for the prefix that ends
// where an optional trailing field (RunStep.Shell) starts: that one is the
// message without it.
func TestRejectTruncatedBody(t *testing.T) {
	for _, c := range messageCases() {
		body := c.in.appendBody(nil)
		without := -1
		if rs, ok := c.in.(*RunStep); ok && len(rs.Shell) > 0 {
			plain := *rs
			plain.Shell = nil
			without = len(plain.appendBody(nil))
		}
		for n := range len(body) {
			_, m, err := Unmarshal(frameBytes(c.in.Type(), body[:n]))
			if n == without {
				if rs, ok := m.(*RunStep); err != nil || !ok || rs.Shell != nil {
					t.Fatalf("%s: body without its shell: %v, %#v", c.name, err, m)
				}
				continue
			}
			if !errors.Is(err, ErrTruncated) {
				t.Fatalf("%s: body prefix %d/%d: error = %v, want ErrTruncated", c.name, n, len(body), err)
			}
		}
	}
}

func TestDecodeLimit(t *testing.T) {
	enc := Marshal(&Output{Stream: StreamStdout, Data: make([]byte, 100)})
	if _, err := Decode(enc, len(enc)); err != nil {
		t.Fatalf("Decode at exact limit: %v", err)
	}
	if _, err := Decode(enc, len(enc)-1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Decode over limit: error = %v, want ErrTooLarge", err)
	}
	if _, _, err := ReadFrame(bytes.NewReader(enc), len(enc)-1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("ReadFrame over limit: error = %v, want ErrTooLarge", err)
	}
	// Non-positive limits mean MaxFrameSize.
	big := make([]byte, MaxFrameSize+1)
	binary.BigEndian.PutUint32(big, uint32(len(big)-4))
	for _, max := range []int{0, -1} {
		if _, err := Decode(big, max); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("Decode(max=%d) of MaxFrameSize+1 bytes: error = %v, want ErrTooLarge", max, err)
		}
	}
	ok := Marshal(&Output{Stream: StreamStdout, Data: make([]byte, MaxPayloadSize-8)})
	if len(ok) > MaxFrameSize {
		t.Fatalf("test frame too large")
	}
	if _, _, err := Unmarshal(ok); err != nil {
		t.Fatalf("Unmarshal of large frame: %v", err)
	}
}

// TestHugeLengthDoesNotAllocate reads a frame header declaring 4 GiB from
// an endless stream and checks the buffer is never allocated.
func TestHugeLengthDoesNotAllocate(t *testing.T) {
	prefix := []byte{0xff, 0xff, 0xff, 0xff, Version, byte(TypeOutput), 0, 0}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 10 {
		r := io.MultiReader(bytes.NewReader(prefix), zeroReader{})
		if _, _, err := ReadFrame(r, MaxFrameSize); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("ReadFrame error = %v, want ErrTooLarge", err)
		}
		if _, err := Decode(prefix, MaxFrameSize); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("Decode error = %v, want ErrTooLarge", err)
		}
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Fatalf("rejecting huge frames allocated %d bytes", n)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestReadFrameStream(t *testing.T) {
	cases := messageCases()
	var buf bytes.Buffer
	var encs [][]byte
	for i, c := range cases {
		f := NewFrame(c.in)
		f.Session, f.Seq, f.Ack = 42, uint64(i+1), uint64(i)
		if i%3 == 0 {
			f.MAC = bytes.Repeat([]byte{byte(i)}, MACSize)
		}
		if err := WriteFrame(&buf, f); err != nil {
			t.Fatal(err)
		}
		encs = append(encs, f.Append(nil))
	}
	stream := bytes.Clone(buf.Bytes())

	for _, rc := range []struct {
		name string
		r    io.Reader
	}{
		{"buffer", &buf},
		{"one-byte", iotest.OneByteReader(bytes.NewReader(stream))},
		{"data-err", iotest.DataErrReader(bytes.NewReader(stream))},
	} {
		t.Run(rc.name, func(t *testing.T) {
			for i, c := range cases {
				f, raw, err := ReadFrame(rc.r, 0)
				if err != nil {
					t.Fatalf("frame %d (%s): %v", i, c.name, err)
				}
				if !bytes.Equal(raw, encs[i]) {
					t.Fatalf("frame %d: raw bytes differ", i)
				}
				if f.Seq != uint64(i+1) || f.Session != 42 {
					t.Fatalf("frame %d: header %+v", i, f)
				}
				m, err := f.Message()
				if err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
				if !reflect.DeepEqual(m, c.expected()) {
					t.Fatalf("frame %d: message = %#v, want %#v", i, m, c.expected())
				}
			}
			for range 2 {
				if _, raw, err := ReadFrame(rc.r, 0); err != io.EOF || raw != nil {
					t.Fatalf("at end: raw %x, error = %v, want io.EOF", raw, err)
				}
			}
		})
	}
}

func TestReadFrameMidFrameEOF(t *testing.T) {
	a := Marshal(&Ping{Nonce: 1})
	b := Marshal(&Close{Reason: "bye"})
	stream := append(bytes.Clone(a), b...)
	for cut := len(a) + 1; cut < len(stream); cut++ {
		r := bytes.NewReader(stream[:cut])
		if _, _, err := ReadFrame(r, 0); err != nil {
			t.Fatalf("cut %d: first frame: %v", cut, err)
		}
		if _, _, err := ReadFrame(r, 0); err != io.ErrUnexpectedEOF {
			t.Fatalf("cut %d: error = %v, want io.ErrUnexpectedEOF", cut, err)
		}
	}
	if _, _, err := ReadFrame(bytes.NewReader(nil), 0); err != io.EOF {
		t.Fatalf("empty stream: error = %v, want io.EOF", err)
	}
}

// TestReadFrameDecodeError checks a complete but invalid frame is returned
// raw and leaves the stream at the next frame.
func TestReadFrameDecodeError(t *testing.T) {
	bad := patch(Marshal(&Ack{Seq: 1}), 4, 9)
	good := Marshal(&Ack{Seq: 2})
	r := bytes.NewReader(append(bytes.Clone(bad), good...))
	f, raw, err := ReadFrame(r, 0)
	if !errors.Is(err, ErrVersion) || f != nil || !bytes.Equal(raw, bad) {
		t.Fatalf("ReadFrame = %v, %x, %v; want nil, raw, ErrVersion", f, raw, err)
	}
	f, _, err = ReadFrame(r, 0)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := f.Message(); err != nil || m.(*Ack).Seq != 2 {
		t.Fatalf("next frame: %v, %v", m, err)
	}
}

type countingWriter struct {
	writes int
	bytes.Buffer
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	return w.Buffer.Write(p)
}

func TestWriteFrameSingleWrite(t *testing.T) {
	var w countingWriter
	f := NewFrame(&Output{Stream: StreamStdout, Data: make([]byte, 100_000)})
	f.MAC = make([]byte, MACSize)
	if err := WriteFrame(&w, f); err != nil {
		t.Fatal(err)
	}
	if w.writes != 1 || !bytes.Equal(w.Bytes(), f.Append(nil)) {
		t.Fatalf("WriteFrame made %d writes", w.writes)
	}
	werr := errors.New("boom")
	if err := WriteFrame(errWriter{werr}, f); err != werr {
		t.Fatalf("WriteFrame error = %v, want %v", err, werr)
	}
}

type errWriter struct{ err error }

func (w errWriter) Write([]byte) (int, error) { return 0, w.err }

// TestDecodeAliasing documents that decoded byte fields alias the input and
// cannot grow into neighbouring data.
func TestDecodeAliasing(t *testing.T) {
	f := NewFrame(&Stdin{BuildID: "b", Data: []byte("abc"), EOF: true})
	f.MAC = bytes.Repeat([]byte{0xcc}, MACSize)
	enc := f.Append(nil)
	g, m, err := Unmarshal(enc)
	if err != nil {
		t.Fatal(err)
	}
	data := m.(*Stdin).Data
	if cap(data) != len(data) || cap(g.Payload) != len(g.Payload) || cap(g.MAC) != MACSize {
		t.Fatalf("decoded slices have spare capacity")
	}
	_ = append(data, 'x') // must not overwrite the EOF byte
	_ = append(g.Payload, 0)
	if again := g.Append(nil); !bytes.Equal(again, enc) {
		t.Fatalf("appending to decoded slices corrupted the input")
	}
	enc[HeaderSize+3] = 'z' // first Data byte
	if string(data) != "zbc" {
		t.Fatalf("Data does not alias input: %q", data)
	}
}

func TestErrorsHaveContext(t *testing.T) {
	_, _, err := Unmarshal(frameBytes(TypeRunStep, []byte{1}))
	if err == nil || !strings.Contains(err.Error(), "RunStep.BuildID") {
		t.Fatalf("error %q lacks field context", err)
	}
	_, _, err = Unmarshal(patch(Marshal(&Ack{}), 5, 200))
	if err == nil || !strings.Contains(err.Error(), "Type(200)") {
		t.Fatalf("error %q lacks type context", err)
	}
}

func TestTypeMethods(t *testing.T) {
	control := map[Type]bool{TypePing: true, TypePong: true, TypeCancel: true, TypeAck: true, TypeClose: true}
	names := map[string]bool{}
	for i := range 256 {
		typ := Type(i)
		known := i >= 1 && i <= 16
		if typ.Known() != known {
			t.Errorf("%d.Known() = %v", i, typ.Known())
		}
		if typ.IsControl() != control[typ] {
			t.Errorf("%v.IsControl() = %v", typ, typ.IsControl())
		}
		s := typ.String()
		if names[s] {
			t.Errorf("duplicate name %q", s)
		}
		names[s] = true
		if known != !strings.HasPrefix(s, "Type(") {
			t.Errorf("Type(%d).String() = %q", i, s)
		}
		if m := newMessage(typ); (m != nil) != known || m != nil && m.Type() != typ {
			t.Errorf("newMessage(%d) = %T", i, m)
		}
	}
	// The numbers are part of the protocol.
	if TypeHello != 1 || TypeOutput != 7 || TypeClose != 14 || TypeCollect != 15 || TypeStats != 16 {
		t.Errorf("type numbers changed")
	}
	if got := TypeFileChunk.String(); got != "FileChunk" {
		t.Errorf("TypeFileChunk.String() = %q", got)
	}
}

func TestFlagsAndStreamStrings(t *testing.T) {
	for f, want := range map[Flags]string{0: "0", FlagMAC: "MAC", FlagControl: "Control", FlagMAC | FlagControl: "MAC|Control", 0x81: "MAC|0x80"} {
		if got := f.String(); got != want {
			t.Errorf("Flags(%#x).String() = %q, want %q", uint8(f), got, want)
		}
	}
	for s, want := range map[Stream]string{StreamStdout: "stdout", StreamStderr: "stderr", 0: "Stream(0)"} {
		if got := s.String(); got != want {
			t.Errorf("Stream(%d).String() = %q, want %q", s, got, want)
		}
		if s.Valid() != (s == 1 || s == 2) {
			t.Errorf("Stream(%d).Valid() = %v", s, s.Valid())
		}
	}
}

func TestSessionMAC(t *testing.T) {
	key := SessionKey([]byte("secret"), []byte("na"), []byte("nm"), 42)
	if bytes.Equal(key, SessionKey([]byte("secret"), []byte("na"), []byte("nm"), 43)) {
		t.Fatal("the session id must change the key")
	}
	f := NewFrame(&RunStep{BuildID: "b#1", Command: "true"})
	f.Session, f.Seq = 42, 7
	Sign(key, f)
	raw, err := f.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(raw, MaxFrameSize)
	if err != nil || !Verify(key, got) {
		t.Fatalf("decoded signed frame does not verify: %v", err)
	}
	for name, alter := range map[string]func(f *Frame){
		"payload": func(f *Frame) { f.Payload = append([]byte(nil), f.Payload...); f.Payload[len(f.Payload)-1] ^= 1 },
		"seq":     func(f *Frame) { f.Seq++ },
		"session": func(f *Frame) { f.Session++ },
		"type":    func(f *Frame) { f.Type = TypeCancel },
		"no MAC":  func(f *Frame) { f.MAC = nil },
	} {
		g, _ := Decode(raw, MaxFrameSize)
		alter(g)
		if Verify(key, g) {
			t.Errorf("frame with altered %s verifies", name)
		}
	}
	if Verify(SessionKey([]byte("other"), []byte("na"), []byte("nm"), 42), got) {
		t.Error("frame verifies under another key")
	}
}

// TestFrameKeysBindDirection: a frame signed by one end never verifies
// at that same end (reflected), nor under another epoch's or another
// node's keys; the agent's proof cannot pass for the legacy one.
func TestFrameKeysBindDirection(t *testing.T) {
	key := SessionKey([]byte("secret"), []byte("na"), []byte("nm"), 42)
	master, agent := KeysFor(key, RoleMaster), KeysFor(key, RoleAgent)
	if !bytes.Equal(master.Send, agent.Receive) || !bytes.Equal(agent.Send, master.Receive) {
		t.Fatal("one end's send key must be the other's receive key")
	}
	if bytes.Equal(master.Send, agent.Send) || bytes.Equal(master.Send, key) || bytes.Equal(agent.Send, key) {
		t.Fatal("each direction must have its own key, not the session key")
	}
	f := NewFrame(&Exit{BuildID: "b#1", Code: 0})
	f.Session, f.Seq = 42, 7
	Sign(agent.Send, f)
	if !Verify(master.Receive, f) {
		t.Fatal("the master must verify the agent's frame")
	}
	if Verify(agent.Receive, f) {
		t.Error("a frame the agent signed verifies at the agent (reflected)")
	}
	if Verify(key, f) {
		t.Error("a frame verifies under the session key itself")
	}
	for name, other := range map[string][]byte{
		"another epoch":   SessionKey([]byte("secret"), []byte("na2"), []byte("nm"), 42),
		"another session": SessionKey([]byte("secret"), []byte("na"), []byte("nm"), 43),
		"another node":    SessionKey([]byte("other node's secret"), []byte("na"), []byte("nm"), 42),
	} {
		for _, r := range []Role{RoleMaster, RoleAgent} {
			if Verify(KeysFor(other, r).Receive, f) {
				t.Errorf("a frame of the session verifies for the %v of %s", r, name)
			}
		}
	}
	if ProofEqual(AgentProof([]byte("s"), []byte("nm"), []byte("na")), LegacyAgentProof([]byte("s"), []byte("nm"), []byte("na"))) {
		t.Error("the agent's proof equals the legacy one: an outdated agent could not be told apart")
	}
	if RoleMaster.Peer() != RoleAgent || RoleAgent.Peer() != RoleMaster || RoleAgent.String() != "agent" {
		t.Error("roles")
	}
}

// TestRefusalKey: the key of signed refusals is bound to the secret, the
// nonces and the session, and is none of the session's keys (a refusal
// cannot pass for a frame of the session, nor the reverse).
func TestRefusalKey(t *testing.T) {
	secret, na, nm := []byte("secret"), []byte("na"), []byte("nm")
	key := RefusalKey(secret, na, nm, 42)
	sk := SessionKey(secret, na, nm, 42)
	keys := KeysFor(sk, RoleMaster)
	for name, other := range map[string][]byte{
		"session key":     sk,
		"master key":      keys.Send,
		"agent key":       keys.Receive,
		"another secret":  RefusalKey([]byte("other"), na, nm, 42),
		"another epoch":   RefusalKey(secret, []byte("na2"), nm, 42),
		"another session": RefusalKey(secret, na, nm, 43),
	} {
		if bytes.Equal(key, other) {
			t.Errorf("the refusal key equals the %s", name)
		}
	}
	f := NewFrame(&AuthResult{OK: false, Reason: "refused"})
	f.Session = 42
	Sign(key, f)
	if !Verify(key, f) {
		t.Fatal("a signed refusal does not verify")
	}
	g := NewFrame(&AuthResult{OK: false, Reason: "another reason"})
	g.Session, g.MAC = 42, f.MAC
	if Verify(key, g) {
		t.Error("the MAC of a refusal verifies with another reason")
	}
}

// TestRunStepWithoutShellIsTheOldFrame: a RunStep without a shell encodes
// as before the field existed, which agents that predate it decode; one
// with a shell is longer, and an old decoder (the fields up to
// TimeoutMillis, then finish) would refuse it: hence FeatureShell.
func TestRunStepWithoutShellIsTheOldFrame(t *testing.T) {
	plain := &RunStep{BuildID: "b#1", StepIndex: 2, StepName: "s", Command: "true", Workdir: "w", TimeoutMillis: 5}
	old := appendString(nil, plain.BuildID)
	old = appendUvarint(old, uint64(plain.StepIndex))
	old = appendString(old, plain.StepName)
	old = appendString(old, plain.Command)
	old = appendUvarint(old, 0)
	old = appendString(old, plain.Workdir)
	old = appendUvarint(old, plain.TimeoutMillis)
	if got := plain.appendBody(nil); !bytes.Equal(got, old) {
		t.Fatalf("RunStep without shell = %x, want the old encoding %x", got, old)
	}
	withShell := *plain
	withShell.Shell = []string{"bash", "-c"}
	if got := withShell.appendBody(nil); len(got) <= len(old) || !bytes.Equal(got[:len(old)], old) {
		t.Fatalf("RunStep with shell = %x, want the old encoding %x followed by the shell", got, old)
	}
}
