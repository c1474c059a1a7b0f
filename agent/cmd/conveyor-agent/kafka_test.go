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
	p.cmd.Stderr = syncWriter{p}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("agent log:\n%s", p.logText())
		}
	})
	waitFor(t, func() bool { return strings.Contains(p.logText(), "hello sent") })

	master, in := kafkaMaster(t, ctx, cfg, "k1")
	p.conn, p.in = master, in
	_, msg := p.next(wire.TypeHello)
	hello := msg.(*wire.Hello)
	if hello.Node != "k1" {
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

	// The master restarts: the new one does not know the session and
	// tells it to end; the agent says hello at once and a new session
	// works, while frames of the old one are dropped.
	if err := master.Close(); err != nil {
		t.Fatal(err)
	}
	master, in = kafkaMaster(t, ctx, cfg, "k1")
	defer master.Close()
	p.conn, p.in, p.seq, p.key = master, in, 0, nil // a restarted master has no key
	f, _ := p.nextFrame(func(f *wire.Frame) bool { return f.Session == 0xa1 })
	p.send(&wire.Close{Reason: "unknown session: the master restarted; say hello again"}, f.Session)
	_, msg = p.next(wire.TypeHello)
	p.skipHellos = false
	p.accept(secret, msg.(*wire.Hello), 0xb2)
	p.send(&wire.RunStep{BuildID: "stale#1", Command: "touch pwned"}, 0xa1)
	r = p.run(0xb2, &wire.RunStep{BuildID: "k#2", Command: "ls", Workdir: "."})
	if r.stdout.String() != "k\n" || r.exit.Code != 0 {
		t.Fatalf("stdout %q exit %+v (want no trace of the stale step)", r.stdout.String(), r.exit)
	}

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
