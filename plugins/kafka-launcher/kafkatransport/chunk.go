package kafkatransport

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

// ChunkSize is the most frame bytes one Kafka record carries. A larger
// frame is split into several records, well below Kafka's default
// message.max.bytes of 1 MiB, and reassembled on receipt. A topic whose
// max.message.bytes is lower gets smaller chunks (see recordLimit).
const ChunkSize = 512 << 10

// recordSlack is what a record batch of one record adds to its value
// (batch header, record framing); a chunk leaves it free below the
// topic's max.message.bytes.
const recordSlack = 4096

// minChunkSize is the smallest chunk a topic's limit may leave: below it,
// the topic cannot reasonably carry frames.
const minChunkSize = 4 << 10

// chunkHeaderSize is the size of the header before each chunk's bytes:
//
//	[0]     version (chunkVersion)
//	[1]     flags (chunkLast on the frame's last chunk)
//	[2:4]   reserved, zero
//	[4:8]   chunk index within the frame, from 0 (big endian)
//	[8:12]  total frame length (big endian)
//	[12:20] frame id, unique per sender connection (big endian)
const chunkHeaderSize = 20

// maxRecordBytes bounds one record's value, plus slack for the record's
// own framing; it is the producer's MaxMessageBytes.
const maxRecordBytes = ChunkSize + chunkHeaderSize + 4096

const (
	chunkVersion = 1
	chunkLast    = 1
)

// appendChunkHeader appends a chunk header to b.
func appendChunkHeader(b []byte, last bool, index uint32, total uint32, id uint64) []byte {
	var flags byte
	if last {
		flags = chunkLast
	}
	b = append(b, chunkVersion, flags, 0, 0)
	b = binary.BigEndian.AppendUint32(b, index)
	b = binary.BigEndian.AppendUint32(b, total)
	return binary.BigEndian.AppendUint64(b, id)
}

// chunks splits frame into record values of ChunkSize frame bytes at
// most, each with its header.
func chunks(frame []byte, id uint64) [][]byte { return split(frame, id, ChunkSize) }

// split splits frame into record values of size frame bytes at most, each
// with its header.
func split(frame []byte, id uint64, size int) [][]byte {
	n := (len(frame) + size - 1) / size
	if n == 0 {
		n = 1 // an empty frame still travels, as one empty chunk
	}
	out := make([][]byte, 0, n)
	for i := 0; i < n; i++ {
		lo := i * size
		hi := min(lo+size, len(frame))
		v := make([]byte, 0, chunkHeaderSize+hi-lo)
		v = appendChunkHeader(v, i == n-1, uint32(i), uint32(len(frame)), id)
		out = append(out, append(v, frame[lo:hi]...))
	}
	return out
}

// Records returns the Kafka record values that carry frame, in order: what
// a Conn writes. id tells a sender's frames apart; tools and tests that
// write frames with their own Kafka client use it.
func Records(frame []byte, id uint64) [][]byte { return chunks(frame, id) }

// RecordFrame returns the frame carried whole by one record value (a frame
// of at most ChunkSize bytes), or false for anything else.
func RecordFrame(v []byte) ([]byte, bool) {
	if len(v) < chunkHeaderSize || v[0] != chunkVersion || v[1]&chunkLast == 0 ||
		binary.BigEndian.Uint32(v[4:8]) != 0 || int(binary.BigEndian.Uint32(v[8:12])) != len(v)-chunkHeaderSize {
		return nil, false
	}
	return v[chunkHeaderSize:], true
}

// reassembler rebuilds frames from chunks received in order. Anything that
// does not fit the expected sequence (a sender that died mid-frame, a
// foreign or corrupt record, an oversized frame) is dropped, counted and
// logged; it never panics and never holds more than max bytes.
type reassembler struct {
	max int
	log hclog.Logger

	active bool
	id     uint64
	next   uint32
	total  int
	buf    []byte

	// skipID is the id of an oversized frame whose chunks are being skipped.
	skipping bool
	skipID   uint64

	// malformed counts dropped records and incomplete frames; read from
	// any goroutine (Conn.Malformed).
	malformed atomic.Uint64
}

// reset drops a partial frame.
func (r *reassembler) reset() {
	r.active = false
	r.buf = nil
	r.next = 0
	r.total = 0
}

// drop counts and logs a malformed record or sequence.
func (r *reassembler) drop(offset int64, format string, args ...any) {
	n := r.malformed.Add(1)
	r.reset()
	r.log.Warn("dropping malformed frame data", "offset", offset, "reason", fmt.Sprintf(format, args...), "malformed_total", n)
}

// add consumes one record value and returns the frame it completes, if any.
func (r *reassembler) add(v []byte, offset int64) ([]byte, bool) {
	if len(v) < chunkHeaderSize {
		r.drop(offset, "record of %d bytes is shorter than a chunk header", len(v))
		return nil, false
	}
	if v[0] != chunkVersion {
		r.drop(offset, "unknown chunk version %d", v[0])
		return nil, false
	}
	last := v[1]&chunkLast != 0
	index := binary.BigEndian.Uint32(v[4:8])
	total := int(binary.BigEndian.Uint32(v[8:12]))
	id := binary.BigEndian.Uint64(v[12:20])
	data := v[chunkHeaderSize:]

	if r.skipping {
		if index != 0 && id == r.skipID {
			return nil, false // rest of an oversized frame, already counted
		}
		r.skipping = false
	}
	if index == 0 {
		if r.active {
			r.drop(offset, "frame %d ended after %d of %d bytes", r.id, len(r.buf), r.total)
		}
		if total > r.max {
			r.drop(offset, "frame of %d bytes exceeds the limit of %d", total, r.max)
			r.skipping, r.skipID = true, id
			return nil, false
		}
		if last {
			if len(data) != total {
				r.drop(offset, "single-chunk frame carries %d bytes, header says %d", len(data), total)
				return nil, false
			}
			return append([]byte(nil), data...), true
		}
		r.active, r.id, r.next, r.total = true, id, 1, total
		r.buf = make([]byte, 0, min(total, 4*ChunkSize))
		return r.appendData(data, last, offset)
	}
	if !r.active || id != r.id || index != r.next || total != r.total {
		r.drop(offset, "chunk %d of frame %d out of sequence", index, id)
		return nil, false
	}
	r.next++
	return r.appendData(data, last, offset)
}

// add2 appends data to the frame in progress.
func (r *reassembler) appendData(data []byte, last bool, offset int64) ([]byte, bool) {
	if len(r.buf)+len(data) > r.total {
		r.drop(offset, "frame %d overflows its length of %d bytes", r.id, r.total)
		return nil, false
	}
	r.buf = append(r.buf, data...)
	if !last {
		return nil, false
	}
	if len(r.buf) != r.total {
		r.drop(offset, "frame %d ended after %d of %d bytes", r.id, len(r.buf), r.total)
		return nil, false
	}
	f := r.buf
	r.reset()
	return f, true
}
