package wire

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Body encoding primitives.

func appendUvarint(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }

func appendVarint(b []byte, v int64) []byte { return binary.AppendVarint(b, v) }

func appendBytes(b, p []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(p)))
	return append(b, p...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// decoder reads a message body. The first error is sticky: once set, every
// read returns a zero value, so decodeBody methods can read all fields and
// return d.finish().
type decoder struct {
	typ Type
	b   []byte // bytes not yet consumed
	err error
}

func (d *decoder) fail(field string, err error) {
	if d.err == nil {
		d.err = fmt.Errorf("decode %s.%s: %w", d.typ, field, err)
	}
}

// finish returns the first error, or ErrMalformed if bytes remain.
func (d *decoder) finish() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("decode %s: %d trailing bytes: %w", d.typ, len(d.b), ErrMalformed)
	}
	return d.err
}

func (d *decoder) uvarint(field string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	switch {
	case n == 0:
		d.fail(field, ErrTruncated)
		return 0
	case n < 0:
		d.fail(field, fmt.Errorf("varint overflows 64 bits: %w", ErrMalformed))
		return 0
	case n > 1 && d.b[n-1] == 0:
		// The final byte of a minimal encoding is non-zero unless the
		// value is 0 encoded in one byte.
		d.fail(field, fmt.Errorf("non-minimal varint: %w", ErrMalformed))
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint(field string) int64 {
	u := d.uvarint(field)
	return int64(u>>1) ^ -int64(u&1)
}

func (d *decoder) uint32(field string) uint32 {
	v := d.uvarint(field)
	if v > math.MaxUint32 {
		d.fail(field, fmt.Errorf("value %d out of uint32 range: %w", v, ErrMalformed))
		return 0
	}
	return uint32(v)
}

func (d *decoder) int32(field string) int32 {
	v := d.varint(field)
	if v < math.MinInt32 || v > math.MaxInt32 {
		d.fail(field, fmt.Errorf("value %d out of int32 range: %w", v, ErrMalformed))
		return 0
	}
	return int32(v)
}

// length reads a length or count and checks that at least n*minSize bytes
// remain, before the caller allocates anything.
func (d *decoder) length(field string, minSize int) int {
	v := d.uvarint(field)
	if d.err != nil {
		return 0
	}
	if v > uint64(len(d.b)/minSize) {
		d.fail(field, fmt.Errorf("length %d exceeds %d remaining bytes: %w", v, len(d.b), ErrTruncated))
		return 0
	}
	return int(v)
}

// bytes returns a length-prefixed byte string aliasing the input, or nil if
// it is empty.
func (d *decoder) bytes(field string) []byte {
	n := d.length(field, 1)
	if d.err != nil || n == 0 {
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) string(field string) string {
	return string(d.bytes(field))
}

func (d *decoder) bool(field string) bool {
	if d.err != nil {
		return false
	}
	if len(d.b) == 0 {
		d.fail(field, ErrTruncated)
		return false
	}
	c := d.b[0]
	if c > 1 {
		d.fail(field, fmt.Errorf("invalid bool byte %#x: %w", c, ErrMalformed))
		return false
	}
	d.b = d.b[1:]
	return c == 1
}
