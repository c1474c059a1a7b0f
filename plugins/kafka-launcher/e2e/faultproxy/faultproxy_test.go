package faultproxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"
)

// testTimeout bounds every wait of these tests.
const testTimeout = 30 * time.Second

const (
	agentID  = "conveyor-agent-n1"
	masterID = "conveyor"
	topic    = "jobs"
)

var agents = Prefix("conveyor-agent-")

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// request is a Kafka request frame (an ApiVersions v0 request) with the
// given client id; nil is a null client id.
func request(clientID *string, body ...byte) []byte {
	var b []byte
	b = binary.BigEndian.AppendUint16(b, 18) // api key
	b = binary.BigEndian.AppendUint16(b, 0)  // api version
	b = binary.BigEndian.AppendUint32(b, 7)  // correlation id
	if clientID == nil {
		b = binary.BigEndian.AppendUint16(b, 0xffff)
	} else {
		b = binary.BigEndian.AppendUint16(b, uint16(len(*clientID)))
		b = append(b, *clientID...)
	}
	b = append(b, body...)
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)
}

func TestPeekClientID(t *testing.T) {
	id := func(s string) *string { return &s }
	badLen := request(id("ab"))
	binary.BigEndian.PutUint16(badLen[12:], 100) // longer than the request
	tests := []struct {
		name   string
		in     []byte
		wantID string
		// wantPeeked is how many bytes of in the peek reads.
		wantPeeked int
	}{
		{"client id", request(id(agentID), 1, 2, 3), agentID, 14 + len(agentID)},
		{"empty client id", request(id(""), 1, 2, 3), "", 14},
		{"null client id", request(nil, 1, 2, 3), "", 14},
		{"client id longer than request", badLen, "", 14},
		{"TLS client hello", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc}, "", 4},
		{"request shorter than a header", []byte{0, 0, 0, 2, 9, 9}, "", 4},
		{"negative size", []byte{0xff, 0xff, 0xff, 0xf0, 0, 0}, "", 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			peeked, got, err := peekClientID(bytes.NewReader(tt.in))
			if err != nil {
				t.Fatalf("peekClientID: %v", err)
			}
			if got != tt.wantID {
				t.Errorf("client id = %q, want %q", got, tt.wantID)
			}
			if !bytes.Equal(peeked, tt.in[:tt.wantPeeked]) {
				t.Errorf("peeked % x, want % x", peeked, tt.in[:tt.wantPeeked])
			}
		})
	}
}

func TestPeekClientIDTruncated(t *testing.T) {
	full := request(new(agentID))
	for _, n := range []int{0, 3, 4, 10, len(full) - 1} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			if _, _, err := peekClientID(bytes.NewReader(full[:n])); err == nil {
				t.Fatalf("peekClientID of %d of %d bytes: no error", n, len(full))
			}
		})
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		name  string
		match Match
		id    string
		want  bool
	}{
		{"all", All, "", true},
		{"prefix", Prefix("conveyor-agent-"), agentID, true},
		{"prefix other", Prefix("conveyor-agent-"), masterID, false},
		{"exact", Exact(masterID), masterID, true},
		{"exact prefix only", Exact(masterID), agentID, false},
	}
	for _, tt := range tests {
		if got := tt.match(tt.id); got != tt.want {
			t.Errorf("%s(%q) = %v, want %v", tt.name, tt.id, got, tt.want)
		}
	}
}

// echoServer is a loopback TCP server that echoes every connection.
type echoServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func startEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{ln: ln}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
				_ = c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		wg.Wait()
	})
	return s
}

func (s *echoServer) accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func newProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// dial connects to p and sends a request with clientID.
func dial(t *testing.T, p *Proxy, clientID string) (net.Conn, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	req := request(&clientID, []byte("body")...)
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	return c, req
}

// expectEcho reads want back from c.
func expectEcho(t *testing.T, c net.Conn, want []byte) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("echo % x, want % x", got, want)
	}
}

// expectClosed checks the proxy closed c.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	n, err := c.Read(make([]byte, 1))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read from a cut connection: %d bytes, %v; want closed", n, err)
	}
}

// expectSilent checks nothing arrives on c for a moment: a blackholed
// connection can never deliver, so this cannot fail spuriously.
func expectSilent(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	n, err := c.Read(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read from a blackholed connection: %d bytes, %v; want a timeout", n, err)
	}
}

func TestProxyForwardsUnchanged(t *testing.T) {
	echo := startEcho(t)
	p := newProxy(t, echo.ln.Addr().String())
	c, req := dial(t, p, agentID)
	expectEcho(t, c, req)
	more := bytes.Repeat([]byte("0123456789"), 10000) // several buffers
	if _, err := c.Write(more); err != nil {
		t.Fatal(err)
	}
	expectEcho(t, c, more)
	if err := p.WaitConn(ctxT(t), Exact(agentID)); err != nil {
		t.Fatal(err)
	}
	want := map[string]Counts{agentID: {Accepted: 1, Forwarded: 1, Live: 1}}
	if got := p.Stats(); !equalStats(got, want) {
		t.Fatalf("Stats() = %+v, want %+v", got, want)
	}
}

func equalStats(a, b map[string]Counts) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestProxyCut(t *testing.T) {
	echo := startEcho(t)
	p := newProxy(t, echo.ln.Addr().String())
	agent, agentReq := dial(t, p, agentID)
	master, masterReq := dial(t, p, masterID)
	expectEcho(t, agent, agentReq)
	expectEcho(t, master, masterReq)

	p.Cut(agents)
	expectClosed(t, agent)
	if _, err := master.Write(masterReq); err != nil {
		t.Fatal(err)
	}
	expectEcho(t, master, masterReq)

	// A new agent connection is closed before reaching the target.
	before := echo.accepted()
	agent2, _ := dial(t, p, "conveyor-agent-n2")
	expectClosed(t, agent2)
	if got := echo.accepted(); got != before {
		t.Errorf("target accepted %d connections during the cut, want %d", got, before)
	}
	if got, want := p.Counts(agents), (Counts{Accepted: 2, Forwarded: 1, Cut: 2}); got != want {
		t.Errorf("Counts(agents) = %+v, want %+v", got, want)
	}
	if got, want := p.Counts(Exact(masterID)), (Counts{Accepted: 1, Forwarded: 1, Live: 1}); got != want {
		t.Errorf("Counts(master) = %+v, want %+v", got, want)
	}

	p.Heal()
	agent3, req := dial(t, p, agentID)
	expectEcho(t, agent3, req)
	if err := p.WaitConn(ctxT(t), agents); err != nil {
		t.Fatal(err)
	}
}

func TestProxyBlackhole(t *testing.T) {
	echo := startEcho(t)
	p := newProxy(t, echo.ln.Addr().String())
	agent, agentReq := dial(t, p, agentID)
	master, masterReq := dial(t, p, masterID)
	expectEcho(t, agent, agentReq)
	expectEcho(t, master, masterReq)

	p.Blackhole(agents)
	ping := []byte("ping")
	if _, err := agent.Write(ping); err != nil {
		t.Fatal(err)
	}
	expectSilent(t, agent)
	agent2, agent2Req := dial(t, p, "conveyor-agent-n2")
	expectSilent(t, agent2)
	if _, err := master.Write(masterReq); err != nil {
		t.Fatal(err)
	}
	expectEcho(t, master, masterReq)
	if got, want := p.Counts(agents), (Counts{Accepted: 2, Forwarded: 1, Blackholed: 2, Live: 2}); got != want {
		t.Errorf("Counts(agents) = %+v, want %+v", got, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := p.WaitConn(ctx, agents); err == nil {
		t.Error("WaitConn found a forwarded agent connection during the blackhole")
	}

	// Healing delivers what was held, on the same connections.
	p.Heal()
	expectEcho(t, agent, ping)
	expectEcho(t, agent2, agent2Req)
	if err := p.WaitConn(ctxT(t), Exact("conveyor-agent-n2")); err != nil {
		t.Fatal(err)
	}
}

func TestProxyDrop(t *testing.T) {
	echo := startEcho(t)
	p := newProxy(t, echo.ln.Addr().String())
	agent, req := dial(t, p, agentID)
	expectEcho(t, agent, req)
	p.Blackhole(All)
	if n := p.Drop(agents); n != 1 {
		t.Errorf("Drop closed %d connections, want 1", n)
	}
	p.Heal()
	expectClosed(t, agent)
	agent2, req2 := dial(t, p, agentID)
	expectEcho(t, agent2, req2)
}

func TestProxyClose(t *testing.T) {
	echo := startEcho(t)
	p := newProxy(t, echo.ln.Addr().String())
	c, req := dial(t, p, agentID)
	expectEcho(t, c, req)
	idle, err := net.Dial("tcp", p.Addr()) // sends nothing
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, c)
	expectClosed(t, idle)
	if err := p.WaitConn(ctxT(t), All); err == nil {
		t.Error("WaitConn on a closed proxy: no error")
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// saramaConfig is a client config whose timeouts and retries are short, so
// that faults show within a few seconds.
func saramaConfig(clientID string, tweaks ...func(*sarama.Config)) *sarama.Config {
	c := sarama.NewConfig()
	c.ClientID = clientID
	c.Net.DialTimeout = 5 * time.Second
	c.Net.ReadTimeout = 5 * time.Second
	c.Net.WriteTimeout = 5 * time.Second
	c.Metadata.Retry.Max = 1
	c.Metadata.Retry.Backoff = 50 * time.Millisecond
	c.Metadata.AllowAutoTopicCreation = false
	c.Producer.Return.Successes = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Retry.Max = 1
	c.Producer.Retry.Backoff = 50 * time.Millisecond
	c.Consumer.MaxWaitTime = 100 * time.Millisecond
	c.Consumer.Retry.Backoff = 50 * time.Millisecond
	for _, tweak := range tweaks {
		tweak(c)
	}
	return c
}

// impatient makes a client give up a request after half a second, and
// retry nothing itself: through a blackhole each new connection costs sarama
// three read timeouts (ApiVersions v3, then v0, then the request itself), so
// retries multiply the time a send takes to fail.
func impatient(c *sarama.Config) {
	c.Net.ReadTimeout = 500 * time.Millisecond
	c.Metadata.Retry.Max = 0
	c.Producer.Retry.Max = 0
}

// client is a sarama client and a sync producer.
type client struct {
	sarama.Client
	prod sarama.SyncProducer
}

func newClient(t *testing.T, addr, clientID string, tweaks ...func(*sarama.Config)) *client {
	t.Helper()
	c, err := sarama.NewClient([]string{addr}, saramaConfig(clientID, tweaks...))
	if err != nil {
		t.Fatalf("sarama client %s: %v", clientID, err)
	}
	prod, err := sarama.NewSyncProducerFromClient(c)
	if err != nil {
		_ = c.Close()
		t.Fatalf("sarama producer %s: %v", clientID, err)
	}
	t.Cleanup(func() {
		_ = prod.Close()
		_ = c.Close()
	})
	return &client{Client: c, prod: prod}
}

func (c *client) send(value string) (int64, error) {
	_, off, err := c.prod.SendMessage(&sarama.ProducerMessage{Topic: topic, Value: sarama.StringEncoder(value)})
	return off, err
}

// mustSend sends value and fails t if it fails.
func (c *client) mustSend(t *testing.T, value string) int64 {
	t.Helper()
	off, err := c.send(value)
	if err != nil {
		t.Fatalf("send %q as %s: %v", value, c.Config().ClientID, err)
	}
	return off
}

// eventuallySend sends value until it succeeds, as a client whose
// connections were just restored keeps retrying.
func (c *client) eventuallySend(t *testing.T, value string) int64 {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		off, err := c.send(value)
		if err == nil {
			return off
		}
		if time.Now().After(deadline) {
			t.Fatalf("send %q as %s: still failing after %v: %v", value, c.Config().ClientID, testTimeout, err)
		}
	}
}

// read reads the values of the topic's partition 0 from offset 0 up to,
// not including, end.
func (c *client) read(t *testing.T, end int64) []string {
	t.Helper()
	cons, err := sarama.NewConsumerFromClient(c.Client)
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	pc, err := cons.ConsumePartition(topic, 0, sarama.OffsetOldest)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var out []string
	timeout := time.After(testTimeout)
	for int64(len(out)) < end {
		select {
		case m := <-pc.Messages():
			out = append(out, string(m.Value))
		case err := <-pc.Errors():
			t.Fatalf("consume: %v", err)
		case <-timeout:
			t.Fatalf("read %d of %d records", len(out), end)
		}
	}
	return out
}

func startBroker(t *testing.T, dataDir string) *Broker {
	return StartBroker(t, dataDir, kfake.SeedTopics(1, topic))
}

func TestBrokerAdvertisesProxy(t *testing.T) {
	b := startBroker(t, "")
	p := b.Proxy()
	if p.Target() == b.Addr() {
		t.Fatalf("proxy forwards to itself (%s)", b.Addr())
	}
	if got := b.Cluster().ListenAddrs(); !slices.Equal(got, []string{b.Addr()}) {
		t.Errorf("kfake ListenAddrs = %v, want [%s]", got, b.Addr())
	}
	master := newClient(t, b.Addr(), masterID)
	agent := newClient(t, b.Addr(), agentID)
	for _, br := range master.Brokers() {
		if br.Addr() != b.Addr() {
			t.Errorf("metadata advertises broker %d at %s, want the proxy %s", br.ID(), br.Addr(), b.Addr())
		}
	}
	master.mustSend(t, "from master")
	agent.mustSend(t, "from agent")
	got := agent.read(t, 2)
	if !slices.Equal(got, []string{"from master", "from agent"}) {
		t.Errorf("read %q", got)
	}
	for _, id := range []string{masterID, agentID} {
		if err := p.WaitConn(ctxT(t), Exact(id)); err != nil {
			t.Error(err)
		}
	}
	if n := p.Counts(All).Forwarded; n < 2 {
		t.Errorf("%d connections went through the proxy, want at least 2", n)
	}
}

func TestBrokerCut(t *testing.T) {
	b := startBroker(t, "")
	p := b.Proxy()
	master := newClient(t, b.Addr(), masterID)
	agent := newClient(t, b.Addr(), agentID)
	master.mustSend(t, "m1")
	agent.mustSend(t, "a1")

	p.Cut(agents)
	start := time.Now()
	if _, err := agent.send("a2"); err == nil {
		t.Fatal("agent produced through a cut")
	} else {
		t.Logf("agent send failed after %v: %v", time.Since(start), err)
	}
	master.mustSend(t, "m2")
	if c2, err := sarama.NewClient([]string{b.Addr()}, saramaConfig("conveyor-agent-n2")); err == nil {
		_ = c2.Close()
		t.Fatal("new agent client bootstrapped through a cut")
	}
	agentCounts := p.Counts(agents)
	if agentCounts.Cut == 0 || agentCounts.Live != 0 {
		t.Errorf("Counts(agents) = %+v, want connections cut and none open", agentCounts)
	}
	if c := p.Counts(Exact(masterID)); c.Cut != 0 || c.Live == 0 {
		t.Errorf("Counts(master) = %+v, want live and never cut", c)
	}

	p.Heal()
	off := agent.eventuallySend(t, "a3")
	if err := p.WaitConn(ctxT(t), agents); err != nil {
		t.Fatal(err)
	}
	if got := master.read(t, off+1); got[off] != "a3" {
		t.Errorf("records %q, want a3 at %d", got, off)
	}
}

func TestBrokerBlackhole(t *testing.T) {
	b := startBroker(t, "")
	p := b.Proxy()
	master := newClient(t, b.Addr(), masterID)
	// The agent's timeouts are short: a silent partition only shows
	// through them.
	agent := newClient(t, b.Addr(), agentID, impatient)
	master.mustSend(t, "m1")
	agent.eventuallySend(t, "a1") // half a second may not do on a busy machine

	p.Blackhole(agents)
	if c := p.Counts(agents); c.Blackholed == 0 || c.Live == 0 || c.Cut != 0 {
		t.Errorf("Counts(agents) = %+v, want blackholed, open connections", c)
	}
	start := time.Now()
	if _, err := agent.send("a2"); err == nil {
		t.Fatal("agent produced through a blackhole")
	} else {
		t.Logf("agent send failed after %v: %v", time.Since(start), err)
	}
	master.mustSend(t, "m2")

	p.Heal()
	off := agent.eventuallySend(t, "a3")
	if err := p.WaitConn(ctxT(t), agents); err != nil {
		t.Fatal(err)
	}
	// a2 may be there too: its request was held, not lost, and the
	// broker gets it at Heal, as over a healed network.
	if got := master.read(t, off+1); got[off] != "a3" {
		t.Errorf("records %q, want a3 at %d", got, off)
	}
}

func TestBrokerRestartKeepsData(t *testing.T) {
	b := startBroker(t, t.TempDir())
	c := newClient(t, b.Addr(), masterID)
	before := []string{"r0", "r1", "r2"}
	for _, v := range before {
		c.mustSend(t, v)
	}
	target := b.Proxy().Target()

	b.Restart(t)
	if got := b.Proxy().Target(); got != target {
		// Start moves only if the port stays taken for seconds.
		t.Logf("broker moved from %s to %s", target, got)
	}
	off := c.eventuallySend(t, "after")
	if off < int64(len(before)) {
		t.Fatalf("offset after restart %d, want at least %d", off, len(before))
	}
	got := c.read(t, off+1)
	if !slices.Equal(got[:len(before)], before) || got[off] != "after" {
		t.Errorf("records after restart %q, want %q first and after at %d", got, before, off)
	}
}

func TestBrokerStopRefusesClients(t *testing.T) {
	b := startBroker(t, t.TempDir())
	c := newClient(t, b.Addr(), masterID, impatient)
	c.eventuallySend(t, "r0")
	b.Stop()
	if b.Cluster() != nil {
		t.Error("Cluster() of a stopped broker is not nil")
	}
	if _, err := c.send("down"); err == nil {
		t.Fatal("produced to a stopped broker")
	}
	b.Start(t)
	c.eventuallySend(t, "up")
}
