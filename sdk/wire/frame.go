package wire

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"slices"
)

// Frame is one protocol frame: a header, an encoded message body and an
// optional MAC.
//
// A Frame returned by Decode aliases the decoded buffer (see the package
// documentation).
type Frame struct {
	// Type identifies the message in Payload.
	Type Type
	// Flags holds the frame flags. On encoding, FlagMAC is derived from
	// MAC and the value of that bit here is ignored; other bits than
	// FlagMAC and FlagControl are invalid.
	Flags Flags
	// Session identifies the master/agent session the frame belongs to.
	Session uint64
	// Seq is the sequence number of this frame in its direction.
	Seq uint64
	// Ack is the highest seq received from the peer (cumulative).
	Ack uint64
	// Payload is the encoded message body. Empty payloads decode as nil.
	Payload []byte
	// MAC is either empty, or MACSize bytes authenticating SignedBytes.
	MAC []byte
}

// NewFrame returns a frame carrying m: it encodes m's body into Payload and
// sets Type, and sets FlagControl if the type is a control type. The
// session, sequence numbers and MAC are left for the caller to fill in.
func NewFrame(m Message) *Frame {
	f := &Frame{Type: m.Type(), Payload: m.appendBody(nil)}
	if f.Type.IsControl() {
		f.Flags |= FlagControl
	}
	return f
}

// Message decodes the payload according to the frame type. It returns an
// error wrapping ErrUnknownType for a type without a message, or
// ErrTruncated or ErrMalformed for an invalid body. The []byte fields of the
// returned message alias Payload. The concrete type of the result is a
// pointer, such as *Hello.
func (f *Frame) Message() (Message, error) {
	m := newMessage(f.Type)
	if m == nil {
		return nil, fmt.Errorf("decode frame of type %v: %w", f.Type, ErrUnknownType)
	}
	if err := m.decodeBody(&decoder{typ: f.Type, b: f.Payload}); err != nil {
		return nil, err
	}
	return m, nil
}

// check validates f for encoding and returns the wire flags and the
// total encoded length.
func (f *Frame) check() (Flags, int, error) {
	flags := f.Flags &^ FlagMAC
	if bad := flags &^ validFlags; bad != 0 {
		return 0, 0, fmt.Errorf("encode frame: reserved flag bits %#x set: %w", uint8(bad), ErrMalformed)
	}
	switch len(f.MAC) {
	case 0:
	case MACSize:
		flags |= FlagMAC
	default:
		return 0, 0, fmt.Errorf("encode frame: MAC is %d bytes, want 0 or %d: %w", len(f.MAC), MACSize, ErrMalformed)
	}
	rest := uint64(HeaderSize-lenSize) + uint64(len(f.Payload)) + uint64(len(f.MAC))
	if rest > math.MaxUint32 || rest > uint64(math.MaxInt-lenSize) {
		return 0, 0, fmt.Errorf("encode frame: %d bytes after the length prefix: %w", rest, ErrTooLarge)
	}
	return flags, lenSize + int(rest), nil
}

// appendHeader appends the header after the length prefix.
func (f *Frame) appendHeader(b []byte, flags Flags) []byte {
	b = append(b, Version, byte(f.Type), byte(flags), 0)
	b = binary.BigEndian.AppendUint64(b, f.Session)
	b = binary.BigEndian.AppendUint64(b, f.Seq)
	return binary.BigEndian.AppendUint64(b, f.Ack)
}

// Append appends the full encoding of f, including the length prefix, to b
// and returns the extended slice. FlagMAC is set on the wire if and only if
// len(f.MAC) == MACSize.
//
// Append panics if f cannot be encoded: if Flags has bits other than
// FlagMAC and FlagControl set, if MAC has a length other than 0 or MACSize,
// or if the frame exceeds the 4 GiB limit of the length prefix. Use Encode
// to get an error instead.
func (f *Frame) Append(b []byte) []byte {
	flags, n, err := f.check()
	if err != nil {
		panic(err)
	}
	return f.append(b, flags, n)
}

func (f *Frame) append(b []byte, flags Flags, n int) []byte {
	b = slices.Grow(b, n)
	b = binary.BigEndian.AppendUint32(b, uint32(n-lenSize))
	b = f.appendHeader(b, flags)
	b = append(b, f.Payload...)
	return append(b, f.MAC...)
}

// Encode returns the full encoding of f, including the length prefix. It
// returns an error wrapping ErrMalformed or ErrTooLarge where Append would
// panic. Encode does not enforce MaxFrameSize; receivers do.
func (f *Frame) Encode() ([]byte, error) {
	flags, n, err := f.check()
	if err != nil {
		return nil, err
	}
	return f.append(make([]byte, 0, n), flags, n), nil
}

// SignedBytes returns the bytes a MAC covers: the header without the length
// prefix, with FlagMAC set as it is on a frame that carries a MAC, followed
// by the payload. The MAC itself is not included. Because FlagMAC is always
// set, the result is the same before the sender fills in MAC and after the
// receiver decodes the frame. Flags are taken as they are, so a frame with
// reserved flag bits signs differently from any frame that can be sent.
func (f *Frame) SignedBytes() []byte {
	b := make([]byte, 0, HeaderSize-lenSize+len(f.Payload))
	b = f.appendHeader(b, f.Flags|FlagMAC)
	return append(b, f.Payload...)
}

// limit returns the frame size limit to apply for max.
func limit(max int) uint64 {
	if max <= 0 {
		return MaxFrameSize
	}
	return uint64(max)
}

// checkLength validates the declared length n (the uint32 prefix) against
// max, without looking at the rest of the frame.
func checkLength(n uint32, max int) error {
	total := lenSize + uint64(n)
	if lim := limit(max); total > lim {
		return fmt.Errorf("decode frame: %d bytes exceed limit of %d: %w", total, lim, ErrTooLarge)
	}
	if n < HeaderSize-lenSize {
		return fmt.Errorf("decode frame: length %d shorter than header: %w", n, ErrMalformed)
	}
	return nil
}

// Decode decodes b, which must hold exactly one whole frame including its
// length prefix. If the declared total length exceeds max, Decode returns
// an error wrapping ErrTooLarge; a non-positive max means MaxFrameSize. A
// b shorter than the declared length yields ErrTruncated, a longer one
// ErrMalformed. Decode validates the header but not the payload (see
// Frame.Message); in particular it accepts types it does not know, so that
// frames can be relayed. The Payload and MAC of the result alias b.
//
// The encoding is canonical: for every frame Decode accepts, Append
// reproduces b exactly.
func Decode(b []byte, max int) (*Frame, error) {
	if len(b) < lenSize {
		return nil, fmt.Errorf("decode frame: %d bytes: %w", len(b), ErrTruncated)
	}
	n := binary.BigEndian.Uint32(b)
	if err := checkLength(n, max); err != nil {
		return nil, err
	}
	total := lenSize + uint64(n)
	switch {
	case uint64(len(b)) < total:
		return nil, fmt.Errorf("decode frame: have %d of %d bytes: %w", len(b), total, ErrTruncated)
	case uint64(len(b)) > total:
		return nil, fmt.Errorf("decode frame: %d trailing bytes: %w", uint64(len(b))-total, ErrMalformed)
	}
	if v := b[4]; v != Version {
		return nil, fmt.Errorf("decode frame: version %d: %w", v, ErrVersion)
	}
	f := &Frame{
		Type:    Type(b[5]),
		Flags:   Flags(b[6]),
		Session: binary.BigEndian.Uint64(b[8:]),
		Seq:     binary.BigEndian.Uint64(b[16:]),
		Ack:     binary.BigEndian.Uint64(b[24:]),
	}
	if bad := f.Flags &^ validFlags; bad != 0 {
		return nil, fmt.Errorf("decode frame: reserved flag bits %#x set: %w", uint8(bad), ErrMalformed)
	}
	if r := b[7]; r != 0 {
		return nil, fmt.Errorf("decode frame: reserved byte is %#x: %w", r, ErrMalformed)
	}
	end := len(b)
	if f.Flags&FlagMAC != 0 {
		if end-HeaderSize < MACSize {
			return nil, fmt.Errorf("decode frame: FlagMAC set but length %d leaves no room for the MAC: %w", n, ErrMalformed)
		}
		end -= MACSize
		f.MAC = b[end:len(b):len(b)]
	}
	if end > HeaderSize {
		f.Payload = b[HeaderSize:end:end]
	}
	return f, nil
}

// ReadFrame reads one frame from r and decodes it with Decode. It returns
// the frame and its raw bytes (including the length prefix), read into a
// freshly allocated buffer that the frame aliases.
//
// ReadFrame returns io.EOF only if r ends cleanly before the first byte of
// a frame, and io.ErrUnexpectedEOF if it ends within a frame. A declared
// length over max (non-positive means MaxFrameSize) yields ErrTooLarge
// before the frame body is allocated or read; the stream is then out of
// sync and should be closed. If the whole frame was read but fails to
// decode, ReadFrame returns nil, the raw bytes and the error, and r is
// positioned at the next frame.
func ReadFrame(r io.Reader, max int) (*Frame, []byte, error) {
	var prefix [lenSize]byte
	if _, err := io.ReadFull(r, prefix[:]); err != nil {
		// ReadFull returns io.EOF only if no byte was read.
		return nil, nil, err
	}
	n := binary.BigEndian.Uint32(prefix[:])
	if err := checkLength(n, max); err != nil {
		return nil, nil, err
	}
	raw := make([]byte, lenSize+int(n))
	copy(raw, prefix[:])
	if _, err := io.ReadFull(r, raw[lenSize:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, nil, err
	}
	f, err := Decode(raw, max)
	if err != nil {
		return nil, raw, err
	}
	return f, raw, nil
}

// WriteFrame encodes f and writes it to w with a single Write call, so that
// message-oriented writers receive exactly one frame per write.
func WriteFrame(w io.Writer, f *Frame) error {
	b, err := f.Encode()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// Marshal returns the encoding of a frame carrying m, as built by NewFrame
// with a zero session, seq and ack and no MAC.
func Marshal(m Message) []byte {
	return NewFrame(m).Append(nil)
}

// Unmarshal decodes one whole frame with a limit of MaxFrameSize and the
// message it carries. If the frame decodes but the message does not, it
// returns the frame, a nil message and the error.
func Unmarshal(b []byte) (*Frame, Message, error) {
	f, err := Decode(b, MaxFrameSize)
	if err != nil {
		return nil, nil, err
	}
	m, err := f.Message()
	if err != nil {
		return f, nil, err
	}
	return f, m, nil
}
