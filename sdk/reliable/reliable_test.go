package reliable

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/sdk/wire"
)

func output(i int) *wire.Frame {
	return wire.NewFrame(&wire.Output{BuildID: "b", Stream: wire.StreamStdout, Data: []byte(strconv.Itoa(i) + "\n")})
}

// TestExactlyOnceAcrossReconnects: frames cross connections that break at
// random points, lose what was in flight and deliver some frames twice;
// after each reconnect the sender resends what the receiver lacks. The
// receiver delivers every frame once, in order.
func TestExactlyOnceAcrossReconnects(t *testing.T) {
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 1))
		out := NewOutbox(1 << 30)
		in := NewInbox(0)
		const n = 500
		var delivered []string
		var inflight []*wire.Frame // sent on the current connection
		for i := range n {
			f := output(i)
			if err := out.Add(context.Background(), f); err != nil {
				t.Fatal(err)
			}
			inflight = append(inflight, f)
			if rng.IntN(20) > 0 {
				continue
			}
			// The connection delivers a random prefix, some twice, then breaks.
			cut := rng.IntN(len(inflight) + 1)
			for _, g := range inflight[:cut] {
				for range 1 + rng.IntN(2) {
					if in.Accept(g.Seq) == Deliver {
						m, _ := g.Message()
						delivered = append(delivered, string(m.(*wire.Output).Data))
					}
				}
			}
			out.Ack(in.Last())
			// Resume: the sender learns the receiver's last and resends.
			inflight = out.Since(in.Last())
		}
		for _, g := range inflight {
			if in.Accept(g.Seq) == Deliver {
				m, _ := g.Message()
				delivered = append(delivered, string(m.(*wire.Output).Data))
			}
		}
		if len(delivered) != n {
			t.Fatalf("seed %d: delivered %d frames, want %d", seed, len(delivered), n)
		}
		for i, d := range delivered {
			if d != strconv.Itoa(i)+"\n" {
				t.Fatalf("seed %d: frame %d is %q", seed, i, d)
			}
		}
	}
}

func TestInboxVerdicts(t *testing.T) {
	in := NewInbox(5)
	for _, tc := range []struct {
		seq  uint64
		want Verdict
	}{{0, Deliver}, {5, Duplicate}, {7, Gap}, {6, Deliver}, {6, Duplicate}, {7, Deliver}, {0, Deliver}} {
		if got := in.Accept(tc.seq); got != tc.want {
			t.Errorf("Accept(%d) = %v, want %v", tc.seq, got, tc.want)
		}
	}
	if d, g := in.Dropped(); d != 2 || g != 1 || in.Last() != 7 {
		t.Errorf("dropped %d/%d, last %d", d, g, in.Last())
	}
}

// TestOutboxBound: Add blocks while the unacknowledged frames fill the
// outbox, resumes on Ack, and fails with the context's cause.
func TestOutboxBound(t *testing.T) {
	size := len(output(0).Payload) // every frame below has this size
	out := NewOutbox(5 * size)
	for i := range 5 { // exactly full
		if err := out.Add(context.Background(), output(i)); err != nil {
			t.Fatal(err)
		}
	}
	added := make(chan error, 1)
	go func() { added <- out.Add(context.Background(), output(5)) }()
	select {
	case err := <-added:
		t.Fatalf("Add into a full outbox returned %v", err)
	case <-time.After(50 * time.Millisecond): // a guard only: Add must still block
	}
	if !out.Ack(2) {
		t.Fatal("Ack(2) refused")
	}
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	if p := out.Pending(); p.Frames != 4 || p.Last != 6 || p.Acked != 2 {
		t.Fatalf("pending %+v", p)
	}
	if out.Ack(99) {
		t.Fatal("an ack beyond the last frame must be refused")
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	full := errors.New("session timeout")
	go cancel(full)
	for i := range 10 {
		if err := out.Add(ctx, output(i)); err != nil {
			if !errors.Is(err, full) {
				t.Fatalf("error %v does not wrap the cause", err)
			}
			return
		}
	}
	t.Fatal("Add never blocked")
}

func TestSequenced(t *testing.T) {
	for typ, want := range map[wire.Type]bool{
		wire.TypeOutput: true, wire.TypeRunStep: true, wire.TypeExit: true, wire.TypeCancel: true,
		wire.TypeHello: false, wire.TypePing: false, wire.TypePong: false, wire.TypeAck: false, wire.TypeAuthResult: false,
	} {
		if Sequenced(typ) != want {
			t.Errorf("Sequenced(%v) = %v", typ, !want)
		}
	}
}

// capture is a Sender keeping what was sent.
type capture struct{ frames [][]byte }

func (c *capture) Send(b []byte) error {
	c.frames = append(c.frames, append([]byte(nil), b...))
	return nil
}

// TestReflectedFramesAreForged: two endpoints of one epoch (the master's
// and the agent's). Every frame an end sent, numbered or not, given back
// to that same end is forged, even with the number it expects next, and
// it neither delivers it nor takes its Ack; the peer delivers it.
func TestReflectedFramesAreForged(t *testing.T) {
	key := wire.SessionKey([]byte("secret"), []byte("na"), []byte("nm"), 7)
	var toAgent, toMaster capture
	master, agent := NewEndpoint(1<<20), NewEndpoint(1<<20)
	master.Begin(&toAgent)
	agent.Begin(&toMaster)
	master.Established(7, wire.KeysFor(key, wire.RoleMaster), 0)
	agent.Established(7, wire.KeysFor(key, wire.RoleAgent), 0)
	ctx := context.Background()
	if err := agent.Send(ctx, &wire.Exit{BuildID: "b#1", Code: 0}); err != nil { // agent's #1
		t.Fatal(err)
	}
	if err := agent.SendControl(&wire.Ack{Seq: 1}, 7); err != nil {
		t.Fatal(err)
	}
	if err := master.Send(ctx, &wire.RunStep{BuildID: "b#2", Command: "true"}); err != nil { // master's #1
		t.Fatal(err)
	}
	decode := func(b []byte) *wire.Frame {
		f, err := wire.Decode(b, wire.MaxFrameSize)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, b := range toMaster.frames {
		if v := agent.Receive(decode(b)); v != Forged {
			t.Errorf("the agent's own frame reflected to it: %v, want forged", v)
		}
	}
	if p := agent.Pending(); p.Frames != 1 {
		t.Errorf("a reflected frame's Ack released the agent's outbox: %+v", p)
	}
	for _, b := range toAgent.frames {
		if v := master.Receive(decode(b)); v != Forged {
			t.Errorf("the master's own frame reflected to it: %v, want forged", v)
		}
	}
	// The genuine RunStep #1 is still the agent's next frame, and the
	// agent's frames reach the master.
	if v := agent.Receive(decode(toAgent.frames[0])); v != Deliver {
		t.Errorf("the master's RunStep at the agent: %v, want deliver", v)
	}
	for _, b := range toMaster.frames {
		if v := master.Receive(decode(b)); v != Deliver {
			t.Errorf("the agent's frame at the master: %v, want deliver", v)
		}
	}
}
