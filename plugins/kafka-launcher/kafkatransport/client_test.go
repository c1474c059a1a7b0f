package kafkatransport

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// newClient opens a shared client on cfg, closed at the test's end.
func newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	cl, err := NewClient(ctxT(t), cfg, testLogger(t))
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// openMaster opens node's master side on cl, closed at the test's end.
func openMaster(t *testing.T, cl *Client, node string) *Conn {
	t.Helper()
	m, err := cl.OpenMaster(ctxT(t), node)
	if err != nil {
		t.Fatalf("OpenMaster %s: %v", node, err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// dialAgent opens node's agent side on a client of its own.
func dialAgent(t *testing.T, cfg Config, node string) *Conn {
	t.Helper()
	a, err := DialAgent(ctxT(t), cfg, node, testLogger(t))
	if err != nil {
		t.Fatalf("DialAgent %s: %v", node, err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return a
}

// establishedTo counts the established TCP connections to port, from
// /proc/net/tcp (this network namespace).
func establishedTo(t *testing.T, port int) int {
	t.Helper()
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Fatalf("count connections: %v", err)
	}
	defer f.Close()
	want := fmt.Sprintf(":%04X", port)
	n := 0
	s := bufio.NewScanner(f)
	for s.Scan() {
		fl := strings.Fields(s.Text())
		if len(fl) > 3 && strings.HasSuffix(fl[2], want) && fl[3] == "01" {
			n++
		}
	}
	return n
}

// TestSharedClientManyNodes: twenty nodes on one client exchange frames
// both ways, and the client holds the same few connections to the broker
// as with one node (it was two sarama clients per node).
func TestSharedClientManyNodes(t *testing.T) {
	c := newCluster(t)
	cfg := Config{Brokers: c.ListenAddrs()}
	port, _ := strconv.Atoi(cfg.Brokers[0][strings.LastIndex(cfg.Brokers[0], ":")+1:])
	const n = 20
	for i := range n {
		ensure(t, cfg, fmt.Sprintf("n%d", i))
	}
	before := establishedTo(t, port)
	cl := newClient(t, cfg)
	masters := make([]*Conn, n)
	for i := range n {
		masters[i] = openMaster(t, cl, fmt.Sprintf("n%d", i))
		if i == 0 {
			// The first node connects the client to the broker.
			if err := masters[0].Send([]byte("hello")); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i, m := range masters {
		if err := m.Send([]byte(fmt.Sprintf("to n%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	shared := establishedTo(t, port) - before
	if shared > 4 {
		t.Errorf("%d connections to the broker for %d nodes on one client, want at most 4", shared, n)
	}
	for i, m := range masters {
		a := dialAgent(t, cfg, fmt.Sprintf("n%d", i))
		if i == 0 {
			if got := recvT(t, a); string(got) != "hello" {
				t.Fatalf("n0 got %q first", got)
			}
		}
		if got, want := string(recvT(t, a)), fmt.Sprintf("to n%d", i); got != want {
			t.Fatalf("n%d got %q, want %q", i, got, want)
		}
		if err := a.Send([]byte(fmt.Sprintf("from n%d", i))); err != nil {
			t.Fatal(err)
		}
		if got, want := string(recvT(t, m)), fmt.Sprintf("from n%d", i); got != want {
			t.Fatalf("master of n%d got %q, want %q", i, got, want)
		}
		_ = a.Close()
	}
	t.Logf("%d nodes on one client: %d connections to the broker", n, shared)
}

// TestFloodPausesOnlyItsNode: node a's agent floods its master side,
// which reads nothing; node b's frames still arrive at once through the
// fetch loop both share, a's queue stays bounded (its partition is
// paused), and once a's reader comes back it gets every frame in order.
func TestFloodPausesOnlyItsNode(t *testing.T) {
	c := newCluster(t)
	cfg := Config{Brokers: c.ListenAddrs()}
	ensure(t, cfg, "a")
	ensure(t, cfg, "b")
	cl := newClient(t, cfg)
	ma, mb := openMaster(t, cl, "a"), openMaster(t, cl, "b")
	aa, ab := dialAgent(t, cfg, "a"), dialAgent(t, cfg, "b")

	const frames = 256 // 8 MiB of 32 KiB frames
	frame := make([]byte, 32<<10)
	for i := range frames {
		frame[0], frame[1] = byte(i>>8), byte(i)
		if err := aa.Send(frame); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until a's side stops taking records: paused, its queue past
	// the high-water mark.
	deadline := time.Now().Add(testTimeout)
	for {
		ma.qmu.Lock()
		paused, queued := ma.paused, ma.qbytes
		ma.qmu.Unlock()
		if paused {
			t.Logf("a paused with %d bytes queued", queued)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a never paused: %d bytes queued", queued)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := range 20 {
		msg := fmt.Sprintf("b %d", i)
		if err := ab.Send([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if got := string(recvT(t, mb)); got != msg {
			t.Fatalf("b got %q, want %q", got, msg)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("b's frame took %s behind a's flood", d)
		}
	}
	// a's queue stays bounded while nobody reads it: one fetch's worth
	// past the high-water mark at most.
	ma.qmu.Lock()
	queued := ma.qbytes
	ma.qmu.Unlock()
	if limit := recvHighWater + 2*maxRecordBytes + channelBuffer*len(frame); queued > limit {
		t.Fatalf("a holds %d bytes queued, want at most %d", queued, limit)
	}
	for i := range frames {
		got := recvT(t, ma)
		if len(got) != len(frame) || got[0] != byte(i>>8) || got[1] != byte(i) {
			t.Fatalf("a's frame %d came back as %d bytes starting %x", i, len(got), got[:2])
		}
	}
}

// TestTeardownReleasesPartition: a node's connection closed on the
// shared client gives its partition back: the node opens again on the
// same client (sarama refuses a partition consumed twice) and resumes
// after what it handled.
func TestTeardownReleasesPartition(t *testing.T) {
	cfg := setup(t, "again")
	cl := newClient(t, cfg)
	a := dialAgent(t, cfg, "again")
	for _, s := range []string{"one", "two", "three"} {
		if err := a.Send([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	m, err := cl.OpenMaster(ctxT(t), "again")
	if err != nil {
		t.Fatal(err)
	}
	if got := recvT(t, m); string(got) != "one" {
		t.Fatalf("got %q", got)
	}
	if got := recvT(t, m); string(got) != "two" {
		t.Fatalf("got %q", got)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m2 := openMaster(t, cl, "again")
	// Close committed "two", the last frame Recv returned.
	if got := recvT(t, m2); string(got) != "three" {
		t.Fatalf("reopened on the same client: got %q, want three", got)
	}
}

// TestRefusedRecordBreaksOnlyItsNode: on a shared client, the broker
// refusing node x's records for good (its topic is gone) breaks x's
// connection only: node y's frames still go both ways.
func TestRefusedRecordBreaksOnlyItsNode(t *testing.T) {
	c := newCluster(t)
	cfg := Config{Brokers: c.ListenAddrs()}
	ensure(t, cfg, "x")
	ensure(t, cfg, "y")
	cl := newClient(t, cfg)
	mx, my := openMaster(t, cl, "x"), openMaster(t, cl, "y")
	ay := dialAgent(t, cfg, "y")
	if err := DeleteTopics(ctxT(t), cfg, []string{TopicsFor("", "x").Commands}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(testTimeout)
	var err error
	for err == nil && time.Now().Before(deadline) {
		if err = mx.Send([]byte("into nowhere")); err == nil {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err == nil {
		t.Fatal("x's sends to a deleted topic never failed")
	}
	for i := range 5 {
		msg := fmt.Sprintf("y %d", i)
		if err := my.Send([]byte(msg)); err != nil {
			t.Fatalf("y's Send after x broke: %v", err)
		}
		if got := string(recvT(t, ay)); got != msg {
			t.Fatalf("y's agent got %q, want %q", got, msg)
		}
		if err := ay.Send([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if got := string(recvT(t, my)); got != msg {
			t.Fatalf("y's master got %q, want %q", got, msg)
		}
	}
}
