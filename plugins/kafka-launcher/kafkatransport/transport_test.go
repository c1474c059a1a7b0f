package kafkatransport

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/hashicorp/go-hclog"
	"github.com/twmb/franz-go/pkg/kfake"
)

// testTimeout bounds every wait of these tests.
const testTimeout = 60 * time.Second

// newCluster starts an in-process broker on a random loopback port.
func newCluster(t *testing.T, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.Ports(0)}, opts...)...)
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	for _, a := range c.ListenAddrs() {
		if !strings.HasPrefix(a, "127.0.0.1:") {
			t.Fatalf("broker listens on %s, want loopback", a)
		}
	}
	return c
}

func testLogger(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Warn, Output: testWriter{t}})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// setup starts a broker and creates the node's topics.
func setup(t *testing.T, node string, opts ...kfake.Opt) Config {
	t.Helper()
	c := newCluster(t, opts...)
	cfg := Config{Brokers: c.ListenAddrs()}
	ensure(t, cfg, node)
	return cfg
}

func ensure(t *testing.T, cfg Config, node string) {
	t.Helper()
	tp := TopicsFor(cfg.TopicPrefix, node)
	if err := EnsureTopics(ctxT(t), cfg, []string{tp.Commands, tp.Events}, 1, 1); err != nil {
		t.Fatalf("EnsureTopics: %v", err)
	}
}

func openPair(t *testing.T, cfg Config, node string) (master, agent *Conn) {
	t.Helper()
	m, err := OpenMaster(ctxT(t), cfg, node, testLogger(t))
	if err != nil {
		t.Fatalf("OpenMaster: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	a, err := DialAgent(ctxT(t), cfg, node, testLogger(t))
	if err != nil {
		t.Fatalf("DialAgent: %v", err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return m, a
}

// recvT receives one frame or fails the test after testTimeout.
func recvT(t *testing.T, c *Conn) []byte {
	t.Helper()
	type res struct {
		b   []byte
		err error
	}
	ch := make(chan res, 1)
	go func() {
		b, err := c.Recv()
		ch <- res{b, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Recv: %v", r.err)
		}
		return r.b
	case <-time.After(testTimeout):
		t.Fatal("Recv timed out")
		return nil
	}
}

func TestRoundTripBothDirections(t *testing.T) {
	cfg := setup(t, "n1")
	m, a := openPair(t, cfg, "n1")
	if err := m.Send([]byte("to agent")); err != nil {
		t.Fatal(err)
	}
	if got := recvT(t, a); string(got) != "to agent" {
		t.Fatalf("agent got %q", got)
	}
	if err := a.Send([]byte("to master")); err != nil {
		t.Fatal(err)
	}
	if got := recvT(t, m); string(got) != "to master" {
		t.Fatalf("master got %q", got)
	}
	if err := m.Send(nil); err != nil {
		t.Fatal(err)
	}
	if got := recvT(t, a); len(got) != 0 {
		t.Fatalf("empty frame arrived as %d bytes", len(got))
	}
	if d := m.Description(); !strings.Contains(d, "conveyor.n1.commands") || !strings.Contains(d, cfg.Brokers[0]) {
		t.Fatalf("description %q", d)
	}
}

func frameN(i int) []byte {
	return binary.BigEndian.AppendUint32([]byte("frame-"), uint32(i))
}

func TestOrderOf1000Frames(t *testing.T) {
	cfg := setup(t, "order")
	m, a := openPair(t, cfg, "order")
	const n = 1000
	errc := make(chan error, 1)
	go func() {
		for i := range n {
			if err := m.Send(frameN(i)); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for i := range n {
		if got := recvT(t, a); !bytes.Equal(got, frameN(i)) {
			t.Fatalf("frame %d: got %q", i, got)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestLargeFrame(t *testing.T) {
	cfg := setup(t, "big")
	m, a := openPair(t, cfg, "big")
	big := make([]byte, 10<<20)
	_, _ = rand.Read(big)
	start := time.Now()
	if err := a.Send(big); err != nil {
		t.Fatal(err)
	}
	if err := a.Send([]byte("after")); err != nil {
		t.Fatal(err)
	}
	if got := recvT(t, m); !bytes.Equal(got, big) {
		t.Fatalf("10 MiB frame came back as %d bytes, different", len(got))
	}
	t.Logf("10 MiB frame round trip: %v", time.Since(start))
	if got := recvT(t, m); string(got) != "after" {
		t.Fatalf("got %q after the large frame", got)
	}
	if err := a.Send(make([]byte, MaxFrameSize+1)); err == nil {
		t.Fatal("oversized frame accepted by Send")
	}
}

func TestResumeAfterClose(t *testing.T) {
	cfg := setup(t, "resume")
	m, a := openPair(t, cfg, "resume")
	for i := range 10 {
		if err := m.Send(frameN(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Handle frames 0..4: the fifth is returned, so counts as handled on Close.
	for i := range 5 {
		if got := recvT(t, a); !bytes.Equal(got, frameN(i)) {
			t.Fatalf("frame %d: got %q", i, got)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := a.Send([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
	if _, err := a.Recv(); !errors.Is(err, io.EOF) || !errors.Is(err, ErrClosed) {
		t.Fatalf("Recv after Close: %v", err)
	}
	a2, err := DialAgent(ctxT(t), cfg, "resume", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	for i := 5; i < 10; i++ {
		if got := recvT(t, a2); !bytes.Equal(got, frameN(i)) {
			t.Fatalf("after reopen, frame %d: got %q", i, got)
		}
	}
	// The master side resumes too: nothing was read there yet, so
	// everything the agent sent arrives, from the oldest.
	if err := a2.Send([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if got := recvT(t, m); string(got) != "hello" {
		t.Fatalf("master got %q", got)
	}
}

func TestCloseReleasesRecv(t *testing.T) {
	cfg := setup(t, "close")
	_, a := openPair(t, cfg, "close")
	errc := make(chan error, 1)
	go func() {
		_, err := a.Recv()
		errc <- err
	}()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, io.EOF) {
			t.Fatalf("Recv ended with %v, want io.EOF", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Recv still blocked after Close")
	}
}

func TestTopicsIdempotentAndDelete(t *testing.T) {
	c := newCluster(t)
	cfg := Config{Brokers: c.ListenAddrs(), TopicPrefix: "ci."}
	tp := TopicsFor(cfg.TopicPrefix, "node/a")
	if tp.Commands != "ci.node_2fa.commands" || tp.Events != "ci.node_2fa.events" {
		t.Fatalf("topics %+v", tp)
	}
	ctx := ctxT(t)
	for range 2 {
		if err := EnsureTopics(ctx, cfg, []string{tp.Commands, tp.Events}, 3, 1); err != nil {
			t.Fatalf("EnsureTopics: %v", err)
		}
	}
	for _, topic := range []string{tp.Commands, tp.Events} {
		if ok, err := TopicExists(ctx, cfg, topic); err != nil || !ok {
			t.Fatalf("topic %s exists=%v err=%v", topic, ok, err)
		}
	}
	// A round trip on a multi-partition topic uses partition 0.
	m, a := openPair(t, cfg, "node/a")
	if err := m.Send([]byte("p0")); err != nil {
		t.Fatal(err)
	}
	if got := recvT(t, a); string(got) != "p0" {
		t.Fatalf("got %q", got)
	}
	_ = m.Close()
	_ = a.Close()
	g := GroupsFor(cfg.TopicPrefix, "node/a")
	for range 2 {
		if err := DeleteTopics(ctx, cfg, []string{tp.Commands, tp.Events}); err != nil {
			t.Fatalf("DeleteTopics: %v", err)
		}
		if err := DeleteGroups(ctx, cfg, []string{g.Master, g.Agent}); err != nil {
			t.Fatalf("DeleteGroups: %v", err)
		}
	}
	for _, topic := range []string{tp.Commands, tp.Events} {
		if ok, err := TopicExists(ctx, cfg, topic); err != nil || ok {
			t.Fatalf("topic %s exists=%v err=%v after delete", topic, ok, err)
		}
	}
	if _, err := DialAgent(ctx, cfg, "node/a", testLogger(t)); err == nil {
		t.Fatal("DialAgent succeeded on deleted topics")
	}
}

func TestEscapeNode(t *testing.T) {
	seen := map[string]string{}
	long := strings.Repeat("x", 300)
	for _, n := range []string{"a", "A-b.c", "a_b", "a/b", "a_2fb", "", "é", long, long + "y", ".", ".."} {
		e := EscapeNode(n)
		if prev, dup := seen[e]; dup {
			t.Fatalf("%q and %q both escape to %q", prev, n, e)
		}
		seen[e] = n
		if err := validTopicChars(e); err != nil {
			t.Fatalf("EscapeNode(%q) = %q: %v", n, e, err)
		}
		if len(e) > maxNodePart || len(TopicsFor("", n).Commands) > maxTopicLen {
			t.Fatalf("EscapeNode(%q) too long: %d", n, len(e))
		}
	}
	if g := GroupsFor("", "n"); g.Master != "conveyor.master.n" || g.Agent != "conveyor.agent.n" {
		t.Fatalf("groups %+v", g)
	}
}

func TestSASL(t *testing.T) {
	for _, mech := range []string{MechanismSCRAMSHA512, MechanismSCRAMSHA256, MechanismPlain} {
		t.Run(mech, func(t *testing.T) {
			c := newCluster(t, kfake.EnableSASL(), kfake.Superuser(mech, "conveyor", "s3cret"))
			cfg := Config{Brokers: c.ListenAddrs(), SASL: &SASL{Mechanism: mech, Username: "conveyor", Password: "s3cret"}}
			ensure(t, cfg, "sasl")
			m, a := openPair(t, cfg, "sasl")
			if err := m.Send([]byte("authenticated")); err != nil {
				t.Fatal(err)
			}
			if got := recvT(t, a); string(got) != "authenticated" {
				t.Fatalf("got %q", got)
			}
			bad := cfg
			bad.SASL = &SASL{Mechanism: mech, Username: "conveyor", Password: "wrong"}
			ctx, cancel := context.WithTimeout(ctxT(t), 20*time.Second)
			defer cancel()
			tp := TopicsFor("", "sasl")
			if err := EnsureTopics(ctx, bad, []string{tp.Commands}, 1, 1); err == nil {
				t.Fatal("wrong password accepted")
			}
		})
	}
}

func TestSaramaConfigErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca, cert, key := writeCert(t, dir)
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no brokers", Config{}, "no brokers"},
		{"bad broker", Config{Brokers: []string{"localhost"}}, "host:port"},
		{"bad prefix", Config{Brokers: []string{"127.0.0.1:1"}, TopicPrefix: "a/b"}, "topic prefix"},
		{"missing CA", Config{Brokers: []string{"127.0.0.1:1"}, TLS: &TLS{CAFile: filepath.Join(dir, "nope.pem")}}, "read CA file"},
		{"garbage CA", Config{Brokers: []string{"127.0.0.1:1"}, TLS: &TLS{CAFile: garbage}}, "no PEM certificate"},
		{"cert without key", Config{Brokers: []string{"127.0.0.1:1"}, TLS: &TLS{CertFile: cert}}, "key_file"},
		{"key without cert", Config{Brokers: []string{"127.0.0.1:1"}, TLS: &TLS{KeyFile: key}}, "cert_file"},
		{"bad key pair", Config{Brokers: []string{"127.0.0.1:1"}, TLS: &TLS{CertFile: cert, KeyFile: garbage}}, "load client certificate"},
		{"unknown mechanism", Config{Brokers: []string{"127.0.0.1:1"}, SASL: &SASL{Mechanism: "GSSAPI", Username: "u"}}, "unknown mechanism"},
		{"no user", Config{Brokers: []string{"127.0.0.1:1"}, SASL: &SASL{Mechanism: "PLAIN"}}, "username"},
	}
	for _, tc := range cases {
		_, err := tc.cfg.Sarama()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want it to mention %q", tc.name, err, tc.want)
		}
	}
	sc, err := Config{Brokers: []string{"127.0.0.1:1"}, TLS: &TLS{CAFile: ca, CertFile: cert, KeyFile: key}, SASL: &SASL{Mechanism: "scram-sha-512", Username: "u", Password: "p"}}.Sarama()
	if err != nil {
		t.Fatalf("valid config: %v", err)
	}
	if !sc.Net.TLS.Enable || sc.Net.TLS.Config.RootCAs == nil || len(sc.Net.TLS.Config.Certificates) != 1 || !sc.Net.SASL.Enable {
		t.Fatal("TLS or SASL not applied")
	}
	if !sc.Producer.Idempotent || sc.Net.MaxOpenRequests != 1 || sc.Consumer.Offsets.AutoCommit.Enable || sc.ClientID != DefaultClientID {
		t.Fatal("producer/consumer guarantees not set")
	}
}

// writeCert writes a self-signed CA certificate, used as both CA and
// client certificate, and its key.
func writeCert(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "conveyor test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert = filepath.Join(dir, "cert.pem")
	key = filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, cert, key
}

var _ = fmt.Sprintf

// TestRefusedRecordBreaksConn: Send does not wait for the broker, so a
// record it refuses for good (here: the topic is gone) must break the
// connection: a later Send and a blocked Recv return the error, and Close
// still returns.
func TestRefusedRecordBreaksConn(t *testing.T) {
	cfg := setup(t, "refused")
	m, _ := openPair(t, cfg, "refused")
	recvErr := make(chan error, 1)
	go func() {
		_, err := m.Recv()
		recvErr <- err
	}()
	tp := TopicsFor(cfg.TopicPrefix, "refused")
	if err := DeleteTopics(ctxT(t), cfg, []string{tp.Commands}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(testTimeout)
	var err error
	for err == nil && time.Now().Before(deadline) {
		if err = m.Send([]byte("into nowhere")); err == nil {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err == nil || !strings.Contains(err.Error(), "kafka send to "+tp.Commands) {
		t.Fatalf("Send to a deleted topic: %v, want the broker's refusal", err)
	}
	select {
	case rerr := <-recvErr:
		if rerr == nil || rerr.Error() != err.Error() {
			t.Fatalf("Recv ended with %v, want %v", rerr, err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Recv still blocked on a broken connection")
	}
	if cerr := m.Close(); cerr == nil {
		t.Fatal("Close of a broken connection reported nothing")
	}
}

// TestSmallRecordLimit: on topics whose records may be 64 KiB at most
// (max.message.bytes), frames go in chunks that fit, and a 1 MiB frame
// still arrives whole.
func TestSmallRecordLimit(t *testing.T) {
	const limit = 64 << 10
	c := newCluster(t)
	cfg := Config{Brokers: c.ListenAddrs()}
	sc, err := cfg.Sarama()
	if err != nil {
		t.Fatal(err)
	}
	sc.Metadata.Full = true // an admin client looks for the controller
	admin, err := sarama.NewClusterAdmin(cfg.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	max := strconv.Itoa(limit)
	tp := TopicsFor("", "small")
	for _, name := range []string{tp.Commands, tp.Events} {
		if err := admin.CreateTopic(name, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1,
			ConfigEntries: map[string]*string{"max.message.bytes": &max}}, false); err != nil {
			t.Fatal(err)
		}
	}
	_ = admin.Close()
	m, a := openPair(t, cfg, "small")
	if m.chunk+chunkHeaderSize+recordSlack > limit || m.chunk < minChunkSize {
		t.Fatalf("chunk of %d bytes for a record limit of %d", m.chunk, limit)
	}
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	if err := m.Send(big); err != nil {
		t.Fatal(err)
	}
	if err := m.Send([]byte("after")); err != nil {
		t.Fatal(err)
	}
	if got := recvT(t, a); !bytes.Equal(got, big) {
		t.Fatalf("1 MiB frame came back as %d bytes", len(got))
	}
	if got := recvT(t, a); string(got) != "after" {
		t.Fatalf("then %q", got)
	}
}

// TestAuthFailureSaysSo: a client whose SASL credentials the broker refuses
// (a wrong password, a user it does not know) is told that authentication
// failed, for which user, not only "run out of available brokers: EOF"
// (kfake closes the connection on a wrong SCRAM proof, as it does on a
// wrong PLAIN password). Other failures are not called authentication
// failures.
func TestAuthFailureSaysSo(t *testing.T) {
	for _, mech := range []string{MechanismSCRAMSHA512, MechanismSCRAMSHA256, MechanismPlain} {
		t.Run(mech, func(t *testing.T) {
			c := newCluster(t, kfake.EnableSASL(), kfake.Superuser(mech, "conveyor", "s3cret"))
			good := Config{Brokers: c.ListenAddrs(), SASL: &SASL{Mechanism: mech, Username: "conveyor", Password: "s3cret"}}
			ensure(t, good, "n")
			for _, creds := range []SASL{
				{Mechanism: mech, Username: "conveyor", Password: "wrong"},
				{Mechanism: mech, Username: "nobody", Password: "s3cret"},
			} {
				cfg := good
				cfg.SASL = &creds
				conn, err := DialAgent(ctxT(t), cfg, "n", nil)
				if err == nil {
					conn.Close()
					t.Fatalf("%s/%s accepted", creds.Username, creds.Password)
				}
				want := fmt.Sprintf("kafka authentication failed for user %q (%s)", creds.Username, mech)
				if !errors.Is(err, ErrAuthentication) || !strings.Contains(err.Error(), want) {
					t.Errorf("%s/%s: %v; want ErrAuthentication, saying %q", creds.Username, creds.Password, err, want)
				}
				t.Logf("%s/%s: %v", creds.Username, creds.Password, err)
				if err := EnsureTopics(ctxT(t), cfg, []string{"x"}, 1, 1); !errors.Is(err, ErrAuthentication) {
					t.Errorf("%s/%s creating topics: %v; want ErrAuthentication", creds.Username, creds.Password, err)
				}
			}
			// A node without topics: no authentication failure.
			if conn, err := DialAgent(ctxT(t), good, "no-topics", nil); err == nil {
				conn.Close()
				t.Error("opened a node without topics")
			} else if errors.Is(err, ErrAuthentication) {
				t.Errorf("a missing topic reported as %v", err)
			}
		})
	}
	// No broker at all: no authentication failure either.
	cfg := Config{Brokers: []string{closedAddr(t)}, SASL: &SASL{Mechanism: MechanismPlain, Username: "u", Password: "p"}}
	if _, err := DialAgent(ctxT(t), cfg, "n", nil); err == nil || errors.Is(err, ErrAuthentication) {
		t.Errorf("no broker: %v", err)
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
