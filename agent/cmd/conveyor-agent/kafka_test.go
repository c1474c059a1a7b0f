package main

// The built agent over Kafka: an in-process kfake broker on loopback, and
// the test playing the master through kafkatransport.OpenMaster.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// kafkaMaster opens the master's side of node's topics and delivers what
// it receives as decoded frames.
func kafkaMaster(t *testing.T, ctx context.Context, cfg kafkatransport.Config, node string) (*kafkatransport.Conn, chan *wire.Frame) {
	t.Helper()
	conn, err := kafkatransport.OpenMaster(ctx, cfg, node, hclog.NewNullLogger())
	if err != nil {
		t.Fatalf("OpenMaster: %v", err)
	}
	in := make(chan *wire.Frame, 1024)
	go func() {
		defer close(in)
		for {
			raw, err := conn.Recv()
			if err != nil {
				return
			}
			f, err := wire.Decode(raw, wire.MaxFrameSize)
			if err != nil {
				in <- nil
				return
			}
			in <- f
		}
	}()
	return conn, in
}

func TestKafka(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	defer cluster.Close()
	for _, a := range cluster.ListenAddrs() {
		if !strings.HasPrefix(a, "127.0.0.1:") {
			t.Fatalf("broker listens on %s, want loopback", a)
		}
	}
	cfg := kafkatransport.Config{Brokers: cluster.ListenAddrs(), TopicPrefix: "test."}
	topics := kafkatransport.TopicsFor(cfg.TopicPrefix, "k1")
	if err := kafkatransport.EnsureTopics(ctx, cfg, []string{topics.Commands, topics.Events}, 1, 1); err != nil {
		t.Fatalf("EnsureTopics: %v", err)
	}
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// The agent starts before the master reads: its Hellos wait in the
	// events topic, repeated every few seconds.
	p := &proc{t: t, workdir: t.TempDir(), exited: make(chan struct{}), skipHellos: true}
	p.cmd = exec.Command(agentBin, "-name", "k1", "-secret-file", secretFile, "-brokers", strings.Join(cfg.Brokers, ","),
		"-topic-prefix", cfg.TopicPrefix, "-workdir", p.workdir, "-heartbeat", "500ms", "-log-level", "debug")
	p.start()
	waitFor(t, func() bool { return strings.Contains(p.logText(), "hello sent") })

	master, in := kafkaMaster(t, ctx, cfg, "k1")
	p.conn, p.in = &masterEnd{conn: master}, in
	_, msg := p.next(wire.TypeHello)
	hello := msg.(*wire.Hello)
	if hello.Node != "k1" || hello.Resume {
		t.Fatalf("hello %+v", hello)
	}
	p.accept(secret, hello, 0xa1)
	r := p.run(0xa1, &wire.RunStep{BuildID: "k#1", Command: "echo over kafka; exit 5", Workdir: "k/1"})
	if r.stdout.String() != "over kafka\n" || r.exit.Code != 5 {
		t.Fatalf("stdout %q exit %+v", r.stdout.String(), r.exit)
	}
	p.send(&wire.Ping{Nonce: 31}, 0xa1)
	if _, msg := p.next(wire.TypePong); msg.(*wire.Pong).Nonce != 31 {
		t.Fatalf("pong %+v", msg)
	}

	// The master restarts while a step runs, keeping the session (as a
	// master persisting it does) but not the epoch's key: it hints that
	// the agent should resume; the agent resumes the session, the step
	// goes on and its output arrives exactly once.
	gate := filepath.Join(t.TempDir(), "gate")
	if err := syscall.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	p.send(&wire.RunStep{BuildID: "k#long", Command: `echo before; read x < "$GATE"; echo after`, Workdir: "k/long",
		Env: []wire.EnvVar{{Name: "GATE", Value: gate}}}, 0xa1)
	if _, msg := p.next(wire.TypeOutput); string(msg.(*wire.Output).Data) != "before\n" {
		t.Fatalf("output %+v", msg)
	}
	if err := master.Close(); err != nil {
		t.Fatal(err)
	}
	master, in = kafkaMaster(t, ctx, cfg, "k1")
	p.conn, p.in = &masterEnd{conn: master}, in
	p.restart(true)
	p.nextFrame(func(f *wire.Frame) bool { return f.Session == 0xa1 })
	p.sendRaw(&wire.Close{Reason: "the master has no key for this session on this connection: resume it"}, 0xa1)
	f, msg := p.next(wire.TypeHello)
	hello = msg.(*wire.Hello)
	if f.Session != 0xa1 || !hello.Resume || hello.LastSeq != p.ep.Pending().Last {
		t.Fatalf("hello %+v on session %x, want to resume session a1 holding frame %d", hello, f.Session, p.ep.Pending().Last)
	}
	if !p.accept(secret, hello, 0xa1) {
		t.Fatal("not resumed")
	}
	if err := os.WriteFile(gate, []byte("go\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = p.collect(0xa1, "k#long")
	if r.stdout.String() != "after\n" || r.exit.Code != 0 {
		t.Fatalf("after the resume: stdout %q exit %+v, want only what the master did not have", r.stdout.String(), r.exit)
	}
	waitFor(t, func() bool { return strings.Contains(p.logText(), "session resumed") })
	if log := p.logText(); strings.Contains(log, "cancelling") {
		t.Fatalf("the resume cancelled steps:\n%s", log)
	}

	// The master restarts without the session: the new one does not know
	// it and tells it to end; the agent says hello to resume it, gets a new
	// session and ends the old one, while frames of the old one (even
	// genuine ones, signed with its key) are dropped.
	if err := master.Close(); err != nil {
		t.Fatal(err)
	}
	master, in = kafkaMaster(t, ctx, cfg, "k1")
	defer master.Close()
	p.conn, p.in = &masterEnd{conn: master}, in
	oldKey, oldNext := p.key, p.ep.Pending().Last+1
	p.restart(false)
	f, _ = p.nextFrame(func(f *wire.Frame) bool { return f.Session == 0xa1 })
	p.sendRaw(&wire.Close{Reason: "unknown session: the master does not know it (it restarted, or the session timed out); say hello again"}, f.Session)
	f, msg = p.next(wire.TypeHello)
	if hello := msg.(*wire.Hello); f.Session != 0xa1 || !hello.Resume {
		t.Fatalf("hello %+v on session %x, want to resume session a1", hello, f.Session)
	}
	p.skipHellos = false
	if p.accept(secret, msg.(*wire.Hello), 0xb2) {
		t.Fatal("resumed an unknown session")
	}
	stale := wire.NewFrame(&wire.RunStep{BuildID: "stale#1", Command: "touch pwned"})
	stale.Session, stale.Seq = 0xa1, oldNext
	wire.Sign(oldKey, stale)
	p.sendFrame(stale)
	r = p.run(0xb2, &wire.RunStep{BuildID: "k#2", Command: "ls", Workdir: "."})
	if r.stdout.String() != "k\n" || r.exit.Code != 0 {
		t.Fatalf("stdout %q exit %+v (want no trace of the stale step)", r.stdout.String(), r.exit)
	}
	waitFor(t, func() bool { return strings.Contains(p.logText(), "dropped a frame of another session") })

	// SIGTERM: Close, exit 0.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, msg := p.next(wire.TypeClose); msg.(*wire.Close).Reason != "agent shutting down" {
		t.Fatalf("close %+v", msg)
	}
	if code := p.wait(); code != 0 {
		t.Fatalf("exit status %d", code)
	}
	if p.dups != 0 {
		t.Fatalf("the agent sent %d duplicates", p.dups)
	}
}

// start starts the agent command p.cmd over Kafka with its log collected,
// waits for it in the background, and kills it when the test ends (its log
// printed if the test failed).
func (p *proc) start() {
	p.t.Helper()
	p.cmd.Stderr = syncWriter{p}
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	p.t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		if p.t.Failed() {
			p.t.Logf("agent log:\n%s", p.logText())
		}
	})
}

// waitFor waits until cond holds, checking it every few milliseconds.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestKafkaAuthFailureLogged: an agent whose Kafka credentials the broker
// refuses says so in its log, naming its user, instead of only "run out
// of available brokers: EOF" (issue 13 §4).
func TestKafkaAuthFailureLogged(t *testing.T) {
	const mech = kafkatransport.MechanismSCRAMSHA512
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0), kfake.EnableSASL(), kfake.Superuser(mech, "k1", "right-pw"))
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	defer cluster.Close()
	dir := t.TempDir()
	secretFile, pwFile := filepath.Join(dir, "secret"), filepath.Join(dir, "kafka.password")
	if err := os.WriteFile(secretFile, []byte(strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pwFile, []byte("wrong-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, workdir: t.TempDir(), exited: make(chan struct{})}
	p.cmd = exec.Command(agentBin, "-name", "k1", "-secret-file", secretFile, "-brokers", strings.Join(cluster.ListenAddrs(), ","),
		"-sasl-mechanism", mech, "-sasl-user", "k1", "-sasl-password-file", pwFile, "-workdir", p.workdir)
	p.start()
	waitFor(t, func() bool { return strings.Contains(p.logText(), "disconnected; reconnecting") })
	if log := p.logText(); !strings.Contains(log, `kafka authentication failed for user \"k1\" (SCRAM-SHA-512)`) {
		t.Errorf("the agent's log does not say that authentication failed:\n%s", log)
	}
}
