// Package wire implements the Conveyor agent/master wire protocol: a
// versioned, length-prefixed binary encoding of frames.
//
// Transports (Kafka, a gRPC stream, SSH stdio, ...) move opaque frames. One
// frame is exactly the bytes produced by [Frame.Append] or [Frame.Encode],
// including the 4-byte length prefix, so a byte-stream transport can write
// frames back to back and recover them with [ReadFrame], while a
// message-oriented transport can carry one frame per message and use
// [Decode].
//
// # Frame layout (version 1, big-endian)
//
//	0..4    uint32 length of everything after these 4 bytes
//	4       uint8  version (1)
//	5       uint8  type ([Type])
//	6       uint8  flags ([Flags]); bits other than FlagMAC|FlagControl must be 0
//	7       uint8  reserved, must be 0
//	8..16   uint64 session
//	16..24  uint64 seq
//	24..32  uint64 ack
//	32..    payload (message body), then a 32-byte MAC if FlagMAC is set
//
// # Message bodies
//
// The payload is the encoding of one [Message]. Fields are encoded in
// declaration order: unsigned integers as uvarints, signed integers as
// zigzag varints, strings and byte slices as a uvarint length followed by the
// bytes, bools as a single byte 0 or 1, and slices as a uvarint count
// followed by the elements. Decoding is strict, so every accepted input has
// exactly one encoding: over-long (non-minimal) varints, out-of-range
// integers, bool bytes other than 0 and 1, and trailing bytes are rejected.
//
// # Empty values and aliasing
//
// Empty byte slices and empty slices of [EnvVar] are encoded as length 0
// whether they are nil or empty, and always decode as nil. Strings may hold
// arbitrary bytes (they are not checked for valid UTF-8).
//
// Decoding does not copy byte slices: [Decode] returns a [Frame] whose
// Payload and MAC alias the input buffer, and [Frame.Message] returns
// messages whose []byte fields alias the Payload. Strings are always copies.
// A caller that reuses the input buffer must copy what it keeps. [ReadFrame]
// reads every frame into a freshly allocated buffer, so its results are safe
// to retain.
//
// # Errors
//
// Decoding errors wrap one of [ErrTruncated], [ErrTooLarge], [ErrVersion],
// [ErrUnknownType] or [ErrMalformed] with context; test for them with
// [errors.Is]. Decoding never panics, whatever the input.
package wire

import (
	"errors"
	"strconv"
)

// Version is the protocol version written into, and required in, every frame.
const Version = 1

const (
	// HeaderSize is the size in bytes of the frame header, including the
	// 4-byte length prefix. The payload starts at this offset.
	HeaderSize = 32
	// MACSize is the size in bytes of the MAC that trails the payload when
	// FlagMAC is set.
	MACSize = 32
	// MaxPayloadSize is the largest payload that fits in a frame of
	// MaxFrameSize bytes. Producers of bulk data (Output, FileChunk, Stdin)
	// should chunk it well below this size.
	MaxPayloadSize = 16 << 20
	// MaxFrameSize is the default limit on the total encoded length of a
	// frame (length prefix, header, payload and MAC). It is used by
	// Unmarshal and when a non-positive limit is passed to Decode or
	// ReadFrame.
	MaxFrameSize = MaxPayloadSize + HeaderSize + MACSize
)

// lenSize is the size of the length prefix.
const lenSize = 4

// Sentinel errors. Errors returned by this package wrap one of these; use
// errors.Is to test for them.
var (
	// ErrTruncated reports that the input ended before a complete frame or
	// field, or that a declared length or count exceeds the bytes left.
	ErrTruncated = errors.New("wire: truncated")
	// ErrTooLarge reports a frame whose declared length exceeds the limit,
	// or a frame too large to encode.
	ErrTooLarge = errors.New("wire: frame too large")
	// ErrVersion reports a frame with an unsupported protocol version.
	ErrVersion = errors.New("wire: unsupported version")
	// ErrUnknownType reports a frame whose type has no known message.
	ErrUnknownType = errors.New("wire: unknown message type")
	// ErrMalformed reports an invalid encoding: reserved bits or bytes set,
	// trailing bytes, a non-minimal or overflowing varint, an out-of-range
	// value, or an invalid MAC length.
	ErrMalformed = errors.New("wire: malformed")
)

// Type identifies the message carried by a frame. The numeric values are
// part of the protocol and never change.
type Type uint8

// Message types.
const (
	// TypeHello is sent by the agent to open or resume a session.
	TypeHello Type = iota + 1
	// TypeChallenge is the master's answer to Hello.
	TypeChallenge
	// TypeAuth carries the agent's proof in response to a Challenge.
	TypeAuth
	// TypeAuthResult tells the agent whether authentication succeeded.
	TypeAuthResult
	// TypeRunStep asks the agent to run one build step.
	TypeRunStep
	// TypeStdin carries standard input for a running step.
	TypeStdin
	// TypeOutput carries standard output or standard error of a step.
	TypeOutput
	// TypeExit reports the end of a step.
	TypeExit
	// TypeCancel asks the agent to cancel a build.
	TypeCancel
	// TypePing is a liveness probe.
	TypePing
	// TypePong answers a Ping.
	TypePong
	// TypeFileChunk carries part of a file (artifact or workspace upload).
	TypeFileChunk
	// TypeAck acknowledges frames received from the peer.
	TypeAck
	// TypeClose announces an orderly end of the session.
	TypeClose
	// TypeCollect asks the agent to send a build's files (artifacts) as
	// FileChunk frames. New in this protocol revision: only sent to agents
	// that announce FeatureCollect in their Hello.
	TypeCollect
	// TypeStats carries the counters of the frames the agent dropped, with
	// its heartbeats. New in this protocol revision: only sent to masters
	// that announce FeatureStats in their AuthResult.
	TypeStats
)

var typeNames = [...]string{
	TypeHello:      "Hello",
	TypeChallenge:  "Challenge",
	TypeAuth:       "Auth",
	TypeAuthResult: "AuthResult",
	TypeRunStep:    "RunStep",
	TypeStdin:      "Stdin",
	TypeOutput:     "Output",
	TypeExit:       "Exit",
	TypeCancel:     "Cancel",
	TypePing:       "Ping",
	TypePong:       "Pong",
	TypeFileChunk:  "FileChunk",
	TypeAck:        "Ack",
	TypeClose:      "Close",
	TypeCollect:    "Collect",
	TypeStats:      "Stats",
}

// String returns the name of the message type, such as "Hello", or
// "Type(N)" for an unknown type.
func (t Type) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	return "Type(" + strconv.Itoa(int(t)) + ")"
}

// Known reports whether t is a message type defined by this protocol
// version.
func (t Type) Known() bool {
	return t >= TypeHello && t <= TypeStats
}

// IsControl reports whether frames of type t are priority control frames
// (Ping, Pong, Cancel, Ack and Close). NewFrame sets FlagControl on them so
// transports may send them ahead of bulk data.
func (t Type) IsControl() bool {
	switch t {
	case TypePing, TypePong, TypeCancel, TypeAck, TypeClose:
		return true
	}
	return false
}

// Flags holds the frame flag bits.
type Flags uint8

const (
	// FlagMAC indicates that a MACSize-byte MAC trails the payload. The
	// encoder derives it from the length of Frame.MAC.
	FlagMAC Flags = 1 << 0
	// FlagControl marks a priority control frame.
	FlagControl Flags = 1 << 1

	validFlags = FlagMAC | FlagControl
)

// String returns the set flags joined by "|", such as "MAC|Control", "0"
// when none is set, or includes the hexadecimal value of unknown bits.
func (f Flags) String() string {
	if f == 0 {
		return "0"
	}
	var s string
	add := func(name string) {
		if s != "" {
			s += "|"
		}
		s += name
	}
	if f&FlagMAC != 0 {
		add("MAC")
	}
	if f&FlagControl != 0 {
		add("Control")
	}
	if rest := f &^ validFlags; rest != 0 {
		add("0x" + strconv.FormatUint(uint64(rest), 16))
	}
	return s
}

// Stream identifies the output stream of an Output message.
type Stream uint8

// Output streams. Any other value is rejected when decoding.
const (
	// StreamStdout is the step's standard output.
	StreamStdout Stream = 1
	// StreamStderr is the step's standard error.
	StreamStderr Stream = 2
)

// String returns "stdout", "stderr" or "Stream(N)".
func (s Stream) String() string {
	switch s {
	case StreamStdout:
		return "stdout"
	case StreamStderr:
		return "stderr"
	}
	return "Stream(" + strconv.Itoa(int(s)) + ")"
}

// Valid reports whether s is StreamStdout or StreamStderr.
func (s Stream) Valid() bool {
	return s == StreamStdout || s == StreamStderr
}
