package kafkalauncher

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/sdk/launcher"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// signalWriter closes seen once a line containing want was written.
type signalWriter struct {
	want string
	once sync.Once
	seen chan struct{}
}

func (w *signalWriter) Write(p []byte) (int, error) {
	if strings.Contains(string(p), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return len(p), nil
}

// TestEmbeddedRetriesBusyPort: a broker restarted while its predecessor
// still holds the port waits for the port instead of failing.
func TestEmbeddedRetriesBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	w := &signalWriter{want: "address in use, retrying", seen: make(chan struct{})}
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: w})
	type res struct {
		b   *embeddedBroker
		err error
	}
	done := make(chan res, 1)
	go func() {
		b, err := startEmbedded(ctxT(t), t.TempDir(), embeddedSpec{addr: addr}, nil, logger)
		done <- res{b, err}
	}()
	select {
	case <-w.seen:
	case r := <-done:
		t.Fatalf("started on a busy port: %v", r.err)
	case <-time.After(testTimeout):
		t.Fatal("no retry logged")
	}
	ln.Close()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("start after the port was freed: %v", r.err)
		}
		r.b.close()
	case <-time.After(testTimeout):
		t.Fatal("broker did not start after the port was freed")
	}
}

// TestEmbeddedSASL: with a sasl block, the embedded broker requires the
// configured credentials.
func TestEmbeddedSASL(t *testing.T) {
	addr := freeAddr(t)
	l := New(testLogger(t))
	defer l.Close()
	global := "embedded_addr = \"" + addr + "\"\nsasl {\n mechanism = \"SCRAM-SHA-512\"\n username = \"conveyor\"\n password = \"pw\"\n}"
	if err := l.Configure(ctxT(t), config(t, t.TempDir(), global, "s")); err != nil {
		t.Fatal(err)
	}
	conn, err := l.Launch(ctxT(t), &launcher.Node{Name: "s", Config: decode(t, "", nodeSpec())})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	good := kafkatransport.Config{Brokers: []string{addr}, SASL: &kafkatransport.SASL{Mechanism: "SCRAM-SHA-512", Username: "conveyor", Password: "pw"}}
	agent, err := kafkatransport.DialAgent(ctxT(t), good, "s", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	if err := conn.Send([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	if b, err := agent.Recv(); err != nil || string(b) != "hi" {
		t.Fatalf("agent got %q, %v", b, err)
	}
	bad := good
	bad.SASL = &kafkatransport.SASL{Mechanism: "SCRAM-SHA-512", Username: "conveyor", Password: "wrong"}
	if c, err := kafkatransport.DialAgent(ctxT(t), bad, "s", testLogger(t)); err == nil {
		c.Close()
		t.Fatal("wrong password accepted")
	}
}
