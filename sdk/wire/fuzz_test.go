package wire

import (
	"bytes"
	"reflect"
	"testing"
)

// FuzzDecode checks that decoding never panics, that every frame Decode
// accepts re-encodes to exactly the input (the encoding is canonical), and
// that every message Message accepts re-encodes to the same payload and
// decodes again to an equal message.
func FuzzDecode(f *testing.F) {
	for i, c := range messageCases() {
		fr := NewFrame(c.in)
		fr.Session, fr.Seq, fr.Ack = uint64(i), uint64(i)*3, uint64(i)*2
		if i%2 == 1 {
			fr.MAC = bytes.Repeat([]byte{byte(i)}, MACSize)
		}
		f.Add(fr.Append(nil))
	}
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 7, 0, 0})
	f.Add([]byte("\x00\x00\x00\x1c\x01\x0e\x03\x00garbage garbage garbage!"))
	f.Add(frameBytes(TypeRunStep, []byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}))
	f.Add(frameBytes(TypeOutput, []byte{1, 'b', 0x80, 0x80, 0x04, 2, 3, 'a', 'b', 'c'}))
	f.Add(frameBytes(200, []byte("unknown type")))

	f.Fuzz(func(t *testing.T, in []byte) {
		fr, err := Decode(in, 1<<20)
		if err != nil {
			if fr != nil {
				t.Fatalf("Decode returned a frame with error %v", err)
			}
			return
		}
		enc, err := fr.Encode()
		if err != nil {
			t.Fatalf("Encode of decoded frame: %v", err)
		}
		if !bytes.Equal(enc, in) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", enc, in)
		}
		signed := fr.SignedBytes()
		want := append([]byte(nil), in[lenSize:len(in)-len(fr.MAC)]...)
		want[2] |= byte(FlagMAC)
		if !bytes.Equal(signed, want) {
			t.Fatalf("SignedBytes = %x, want %x", signed, want)
		}
		m, err := fr.Message()
		if err != nil {
			if m != nil {
				t.Fatalf("Message returned %#v with error %v", m, err)
			}
			return
		}
		if m.Type() != fr.Type {
			t.Fatalf("message type %v in frame of type %v", m.Type(), fr.Type)
		}
		re := Marshal(m)
		if payload := re[HeaderSize:]; !bytes.Equal(payload, fr.Payload) {
			t.Fatalf("message re-encoding differs:\n got %x\nwant %x", payload, fr.Payload)
		}
		_, m2, err := Unmarshal(re)
		if err != nil {
			t.Fatalf("Unmarshal of re-marshalled message: %v", err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("message changed:\n got %#v\nwant %#v", m2, m)
		}
	})
}
