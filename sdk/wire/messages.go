package wire

import "fmt"

// Message is a protocol message: the body of a frame. The message types of
// this package implement it with pointer receivers (*Hello, *Output, ...).
type Message interface {
	// Type returns the frame type that carries this message.
	Type() Type
	// appendBody appends the encoded message body to b.
	appendBody(b []byte) []byte
	// decodeBody replaces the message's fields with those decoded from d.
	decodeBody(d *decoder) error
}

// newMessage returns a zero message for t, or nil if t is unknown.
func newMessage(t Type) Message {
	switch t {
	case TypeHello:
		return new(Hello)
	case TypeChallenge:
		return new(Challenge)
	case TypeAuth:
		return new(Auth)
	case TypeAuthResult:
		return new(AuthResult)
	case TypeRunStep:
		return new(RunStep)
	case TypeStdin:
		return new(Stdin)
	case TypeOutput:
		return new(Output)
	case TypeExit:
		return new(Exit)
	case TypeCancel:
		return new(Cancel)
	case TypePing:
		return new(Ping)
	case TypePong:
		return new(Pong)
	case TypeFileChunk:
		return new(FileChunk)
	case TypeAck:
		return new(Ack)
	case TypeClose:
		return new(Close)
	case TypeCollect:
		return new(Collect)
	case TypeStats:
		return new(Stats)
	}
	return nil
}

// Hello is sent by the agent to the master to open a session, or to resume
// one after a reconnect.
type Hello struct {
	Node         string // agent node name
	AgentVersion string // agent software version
	OS           string // GOOS-style operating system
	Arch         string // GOARCH-style architecture
	Nonce        []byte // client challenge for the master to prove itself
	Resume       bool   // whether the agent asks to resume a previous session
	LastSeq      uint64 // highest seq the agent received, when resuming
}

// Type returns TypeHello.
func (*Hello) Type() Type { return TypeHello }

func (m *Hello) appendBody(b []byte) []byte {
	b = appendString(b, m.Node)
	b = appendString(b, m.AgentVersion)
	b = appendString(b, m.OS)
	b = appendString(b, m.Arch)
	b = appendBytes(b, m.Nonce)
	b = appendBool(b, m.Resume)
	return appendUvarint(b, m.LastSeq)
}

func (m *Hello) decodeBody(d *decoder) error {
	m.Node = d.string("Node")
	m.AgentVersion = d.string("AgentVersion")
	m.OS = d.string("OS")
	m.Arch = d.string("Arch")
	m.Nonce = d.bytes("Nonce")
	m.Resume = d.bool("Resume")
	m.LastSeq = d.uvarint("LastSeq")
	return d.finish()
}

// Challenge is the master's answer to Hello.
type Challenge struct {
	Nonce []byte // server challenge the agent must prove against
	Proof []byte // master's proof over the agent's nonce; may be empty
}

// Type returns TypeChallenge.
func (*Challenge) Type() Type { return TypeChallenge }

func (m *Challenge) appendBody(b []byte) []byte {
	b = appendBytes(b, m.Nonce)
	return appendBytes(b, m.Proof)
}

func (m *Challenge) decodeBody(d *decoder) error {
	m.Nonce = d.bytes("Nonce")
	m.Proof = d.bytes("Proof")
	return d.finish()
}

// Auth carries the agent's proof in response to a Challenge.
type Auth struct {
	Proof []byte // agent's proof over the master's nonce
}

// Type returns TypeAuth.
func (*Auth) Type() Type { return TypeAuth }

func (m *Auth) appendBody(b []byte) []byte {
	return appendBytes(b, m.Proof)
}

func (m *Auth) decodeBody(d *decoder) error {
	m.Proof = d.bytes("Proof")
	return d.finish()
}

// AuthResult tells the agent whether authentication succeeded.
type AuthResult struct {
	OK      bool   // whether the agent is authenticated
	Reason  string // why authentication failed, if it did
	Session uint64 // the session identifier to use in frame headers
}

// Type returns TypeAuthResult.
func (*AuthResult) Type() Type { return TypeAuthResult }

func (m *AuthResult) appendBody(b []byte) []byte {
	b = appendBool(b, m.OK)
	b = appendString(b, m.Reason)
	return appendUvarint(b, m.Session)
}

func (m *AuthResult) decodeBody(d *decoder) error {
	m.OK = d.bool("OK")
	m.Reason = d.string("Reason")
	m.Session = d.uvarint("Session")
	return d.finish()
}

// EnvVar is one environment variable of a RunStep.
type EnvVar struct {
	Name  string // variable name
	Value string // variable value
}

// RunStep asks the agent to run one step of a build.
type RunStep struct {
	BuildID       string   // build identifier
	StepIndex     uint32   // index of the step within the build
	StepName      string   // human-readable step name
	Command       string   // command to run
	Env           []EnvVar // environment, in the order given; empty decodes as nil
	Workdir       string   // working directory
	TimeoutMillis uint64   // step timeout in milliseconds; 0 means none
	// Shell is the command line the step runs under, Command appended as
	// its last argument; empty means the agent's default, /bin/sh -c. It
	// is encoded after TimeoutMillis only when set, so a RunStep without
	// it is the frame every agent decodes; a master sends one with it only
	// to an agent announcing FeatureShell (an older agent would drop the
	// frame as malformed).
	Shell []string
}

// Type returns TypeRunStep.
func (*RunStep) Type() Type { return TypeRunStep }

func (m *RunStep) appendBody(b []byte) []byte {
	b = appendString(b, m.BuildID)
	b = appendUvarint(b, uint64(m.StepIndex))
	b = appendString(b, m.StepName)
	b = appendString(b, m.Command)
	b = appendUvarint(b, uint64(len(m.Env)))
	for _, e := range m.Env {
		b = appendString(b, e.Name)
		b = appendString(b, e.Value)
	}
	b = appendString(b, m.Workdir)
	b = appendUvarint(b, m.TimeoutMillis)
	if len(m.Shell) > 0 {
		b = appendUvarint(b, uint64(len(m.Shell)))
		for _, w := range m.Shell {
			b = appendString(b, w)
		}
	}
	return b
}

func (m *RunStep) decodeBody(d *decoder) error {
	m.BuildID = d.string("BuildID")
	m.StepIndex = d.uint32("StepIndex")
	m.StepName = d.string("StepName")
	m.Command = d.string("Command")
	m.Env = nil
	// Each EnvVar takes at least two bytes (two empty strings).
	if n := d.length("Env", 2); n > 0 {
		m.Env = make([]EnvVar, n)
		for i := range m.Env {
			m.Env[i].Name = d.string("Env.Name")
			m.Env[i].Value = d.string("Env.Value")
		}
	}
	m.Workdir = d.string("Workdir")
	m.TimeoutMillis = d.uvarint("TimeoutMillis")
	m.Shell = nil
	if d.err == nil && len(d.b) > 0 {
		// Each word takes at least one byte (its length).
		n := d.length("Shell", 1)
		if n == 0 && d.err == nil {
			d.fail("Shell", fmt.Errorf("an empty shell is sent as no field: %w", ErrMalformed))
		}
		if n > 0 {
			m.Shell = make([]string, n)
			for i := range m.Shell {
				m.Shell[i] = d.string("Shell")
			}
		}
	}
	return d.finish()
}

// Stdin carries standard input for a build's step. The first Stdin frame
// of a step comes before its RunStep: it tells the agent to give the step
// a pipe as standard input instead of /dev/null. The others follow the
// RunStep; the last one has EOF set, and the agent then closes the pipe.
type Stdin struct {
	BuildID string // build identifier
	Data    []byte // input bytes; empty decodes as nil
	EOF     bool   // whether standard input is closed after Data
}

// Type returns TypeStdin.
func (*Stdin) Type() Type { return TypeStdin }

func (m *Stdin) appendBody(b []byte) []byte {
	b = appendString(b, m.BuildID)
	b = appendBytes(b, m.Data)
	return appendBool(b, m.EOF)
}

func (m *Stdin) decodeBody(d *decoder) error {
	m.BuildID = d.string("BuildID")
	m.Data = d.bytes("Data")
	m.EOF = d.bool("EOF")
	return d.finish()
}

// Output carries output of a running step. Stream must be StreamStdout or
// StreamStderr; the receiver rejects any other value.
type Output struct {
	BuildID   string // build identifier
	StepIndex uint32 // index of the step within the build
	Stream    Stream // which stream Data was written to
	Data      []byte // output bytes; empty decodes as nil
}

// Type returns TypeOutput.
func (*Output) Type() Type { return TypeOutput }

func (m *Output) appendBody(b []byte) []byte {
	b = appendString(b, m.BuildID)
	b = appendUvarint(b, uint64(m.StepIndex))
	b = appendUvarint(b, uint64(m.Stream))
	return appendBytes(b, m.Data)
}

func (m *Output) decodeBody(d *decoder) error {
	m.BuildID = d.string("BuildID")
	m.StepIndex = d.uint32("StepIndex")
	s := d.uvarint("Stream")
	if d.err == nil && s != uint64(StreamStdout) && s != uint64(StreamStderr) {
		d.fail("Stream", fmt.Errorf("invalid stream %d: %w", s, ErrMalformed))
	}
	m.Stream = Stream(s)
	m.Data = d.bytes("Data")
	return d.finish()
}

// Exit reports that a step finished.
type Exit struct {
	BuildID   string // build identifier
	StepIndex uint32 // index of the step within the build
	Code      int32  // exit code of the step's process
	Error     string // error that prevented running or waiting for the step, if any
}

// Type returns TypeExit.
func (*Exit) Type() Type { return TypeExit }

func (m *Exit) appendBody(b []byte) []byte {
	b = appendString(b, m.BuildID)
	b = appendUvarint(b, uint64(m.StepIndex))
	b = appendVarint(b, int64(m.Code))
	return appendString(b, m.Error)
}

func (m *Exit) decodeBody(d *decoder) error {
	m.BuildID = d.string("BuildID")
	m.StepIndex = d.uint32("StepIndex")
	m.Code = d.int32("Code")
	m.Error = d.string("Error")
	return d.finish()
}

// Cancel asks the agent to cancel a build. It is a control message.
type Cancel struct {
	BuildID string // build identifier
	Reason  string // why the build is cancelled
}

// Type returns TypeCancel.
func (*Cancel) Type() Type { return TypeCancel }

func (m *Cancel) appendBody(b []byte) []byte {
	b = appendString(b, m.BuildID)
	return appendString(b, m.Reason)
}

func (m *Cancel) decodeBody(d *decoder) error {
	m.BuildID = d.string("BuildID")
	m.Reason = d.string("Reason")
	return d.finish()
}

// Ping is a liveness probe. It is a control message.
type Ping struct {
	Nonce    uint64 // value echoed in the Pong
	UnixNano int64  // sender's clock, in nanoseconds since the Unix epoch
}

// Type returns TypePing.
func (*Ping) Type() Type { return TypePing }

func (m *Ping) appendBody(b []byte) []byte {
	b = appendUvarint(b, m.Nonce)
	return appendVarint(b, m.UnixNano)
}

func (m *Ping) decodeBody(d *decoder) error {
	m.Nonce = d.uvarint("Nonce")
	m.UnixNano = d.varint("UnixNano")
	return d.finish()
}

// Pong answers a Ping. It is a control message.
type Pong struct {
	Nonce    uint64 // the Ping's Nonce
	UnixNano int64  // sender's clock, in nanoseconds since the Unix epoch
}

// Type returns TypePong.
func (*Pong) Type() Type { return TypePong }

func (m *Pong) appendBody(b []byte) []byte {
	b = appendUvarint(b, m.Nonce)
	return appendVarint(b, m.UnixNano)
}

func (m *Pong) decodeBody(d *decoder) error {
	m.Nonce = d.uvarint("Nonce")
	m.UnixNano = d.varint("UnixNano")
	return d.finish()
}

// FileChunk carries part of a file: the agent sends the files a Collect
// asked for as consecutive chunks, each file's from offset 0 up to the one
// with Final set.
type FileChunk struct {
	BuildID string // build identifier
	Path    string // slash-separated file path
	Mode    uint32 // file mode bits
	Offset  uint64 // offset of Data within the file
	Data    []byte // file bytes; empty decodes as nil
	Final   bool   // whether this is the last chunk of the file
}

// Type returns TypeFileChunk.
func (*FileChunk) Type() Type { return TypeFileChunk }

func (m *FileChunk) appendBody(b []byte) []byte {
	b = appendString(b, m.BuildID)
	b = appendString(b, m.Path)
	b = appendUvarint(b, uint64(m.Mode))
	b = appendUvarint(b, m.Offset)
	b = appendBytes(b, m.Data)
	return appendBool(b, m.Final)
}

func (m *FileChunk) decodeBody(d *decoder) error {
	m.BuildID = d.string("BuildID")
	m.Path = d.string("Path")
	m.Mode = d.uint32("Mode")
	m.Offset = d.uvarint("Offset")
	m.Data = d.bytes("Data")
	m.Final = d.bool("Final")
	return d.finish()
}

// Ack acknowledges, cumulatively, every frame up to Seq received from the
// peer. It is a control message.
type Ack struct {
	Seq uint64 // highest seq received from the peer
}

// Type returns TypeAck.
func (*Ack) Type() Type { return TypeAck }

func (m *Ack) appendBody(b []byte) []byte {
	return appendUvarint(b, m.Seq)
}

func (m *Ack) decodeBody(d *decoder) error {
	m.Seq = d.uvarint("Seq")
	return d.finish()
}

// Close announces an orderly end of the session. It is a control message.
type Close struct {
	Reason string // why the session ends
}

// Type returns TypeClose.
func (*Close) Type() Type { return TypeClose }

func (m *Close) appendBody(b []byte) []byte {
	return appendString(b, m.Reason)
}

func (m *Close) decodeBody(d *decoder) error {
	m.Reason = d.string("Reason")
	return d.finish()
}

// Collect asks the agent to send the files of a build's workspace that
// match Patterns, each as FileChunk frames, then to report the end with
// an Exit carrying StepIndex: code 0 when every pattern matched and every
// matching file was sent, 1 when some pattern matched nothing, 2 when a
// matching file could not be sent (it leads outside the workspace, or
// cannot be read); Error then says what, and Output frames on stderr (with
// StepIndex) say it in the build's log. A Cancel of the build stops it.
type Collect struct {
	BuildID   string   // build identifier
	StepIndex uint32   // index the collection reports under: after the build's steps
	Workdir   string   // the build's workspace, relative to the agent's workdir (as in RunStep)
	Patterns  []string // slash-separated glob patterns relative to Workdir; "**" matches any number of directories; empty decodes as nil
}

// Type returns TypeCollect.
func (*Collect) Type() Type { return TypeCollect }

func (m *Collect) appendBody(b []byte) []byte {
	b = appendString(b, m.BuildID)
	b = appendUvarint(b, uint64(m.StepIndex))
	b = appendString(b, m.Workdir)
	b = appendUvarint(b, uint64(len(m.Patterns)))
	for _, p := range m.Patterns {
		b = appendString(b, p)
	}
	return b
}

func (m *Collect) decodeBody(d *decoder) error {
	m.BuildID = d.string("BuildID")
	m.StepIndex = d.uint32("StepIndex")
	m.Workdir = d.string("Workdir")
	m.Patterns = nil
	// Each pattern takes at least one byte (its length).
	if n := d.length("Patterns", 1); n > 0 {
		m.Patterns = make([]string, n)
		for i := range m.Patterns {
			m.Patterns[i] = d.string("Patterns")
		}
	}
	return d.finish()
}

// Counter is one named counter of a Stats message.
type Counter struct {
	Name  string // what it counts ("forged", "duplicate", ...)
	Value uint64 // its value since the sender started
}

// Stats reports the sender's counters of dropped frames (the agent's:
// forged, replayed, malformed, duplicate, hints...), so that the master
// shows what its agents rejected. The counters are named, so a later
// revision may add some without a new message. It is an unnumbered
// control message sent with the heartbeats, signed like every frame of
// the session.
type Stats struct {
	Counters []Counter // in the sender's order; empty decodes as nil
}

// Type returns TypeStats.
func (*Stats) Type() Type { return TypeStats }

func (m *Stats) appendBody(b []byte) []byte {
	b = appendUvarint(b, uint64(len(m.Counters)))
	for _, c := range m.Counters {
		b = appendString(b, c.Name)
		b = appendUvarint(b, c.Value)
	}
	return b
}

func (m *Stats) decodeBody(d *decoder) error {
	m.Counters = nil
	// Each Counter takes at least two bytes (an empty name, a zero).
	if n := d.length("Counters", 2); n > 0 {
		m.Counters = make([]Counter, n)
		for i := range m.Counters {
			m.Counters[i].Name = d.string("Counters.Name")
			m.Counters[i].Value = d.uvarint("Counters.Value")
		}
	}
	return d.finish()
}
