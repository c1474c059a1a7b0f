package kafkalauncher

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/sdk/launcher"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// securedGlobal is a launcher block running the embedded broker on addr
// with TLS (the broker's certificate and key, the CA the master trusts),
// SASL users for the master and agents a and b, and ACLs (on by default
// with users).
func securedGlobal(addr, ca, cert, key string) string {
	return fmt.Sprintf(`
embedded_addr = %q
tls {
  ca_file = %q
}
sasl {
  mechanism = "SCRAM-SHA-512"
  username  = "conveyor"
  password  = "master-pw"
}
embedded {
  tls {
    cert_file = %q
    key_file  = %q
  }
  sasl {
    users = {
      a = "a-pw"
      b = "b-pw"
    }
  }
}
`, addr, ca, cert, key)
}

// TestEmbeddedSecuredLaunch: configured from HCL, the embedded broker
// speaks TLS and SASL with per-node ACLs; the master reaches it through
// the launcher's own tls and sasl blocks, an agent with its own user.
func TestEmbeddedSecuredLaunch(t *testing.T) {
	dir := t.TempDir()
	ca := newTestPKI(t, dir, "servers")
	cert, key := ca.issue("broker", certOpts{ips: loopback})
	addr := freeAddr(t)
	l := New(testLogger(t))
	defer l.Close()
	if err := l.Configure(ctxT(t), config(t, t.TempDir(), securedGlobal(addr, ca.caFile, cert, key), "a", "b")); err != nil {
		t.Fatal(err)
	}
	conn, err := l.Launch(ctxT(t), &launcher.Node{Name: "a", Config: decode(t, "", nodeSpec())})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	agentCfg := func(user, pw string) kafkatransport.Config {
		return kafkatransport.Config{Brokers: []string{addr}, TLS: &kafkatransport.TLS{CAFile: ca.caFile},
			SASL: &kafkatransport.SASL{Mechanism: DefaultAgentMechanism, Username: user, Password: pw}}
	}
	agent, err := kafkatransport.DialAgent(ctxT(t), agentCfg("a", "a-pw"), "a", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	if err := conn.Send([]byte("to a")); err != nil {
		t.Fatal(err)
	}
	if b, err := agent.Recv(); err != nil || string(b) != "to a" {
		t.Fatalf("agent got %q, %v", b, err)
	}
	if err := agent.Send([]byte("from a")); err != nil {
		t.Fatal(err)
	}
	if b, err := conn.Recv(); err != nil || string(b) != "from a" {
		t.Fatalf("master got %q, %v", b, err)
	}

	if c, err := kafkatransport.DialAgent(ctxT(t), agentCfg("a", "a-pw"), "b", testLogger(t)); err == nil {
		c.Close()
		t.Fatal("agent a's user opened node b's topics")
	}
	mustNotReach(t, kafkatransport.Config{Brokers: []string{addr}, SASL: agentCfg("a", "a-pw").SASL}, "")

	set, _, err := l.settings()
	if err != nil {
		t.Fatal(err)
	}
	if mech, user, ok := set.agentSASL("b"); !ok || mech != "SCRAM-SHA-512" || user != "b" {
		t.Fatalf("agent b's SASL: %q %q %v", mech, user, ok)
	}
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestEmbeddedPlaintextSaysSo: the demo configuration (no TLS, no SASL,
// loopback) still works and warns that it is a loopback demo.
func TestEmbeddedPlaintextSaysSo(t *testing.T) {
	var out syncBuffer
	l := New(hclog.New(&hclog.LoggerOptions{Output: &out, Level: hclog.Info}))
	defer l.Close()
	addr := freeAddr(t)
	if err := l.Configure(ctxT(t), config(t, t.TempDir(), fmt.Sprintf("embedded_addr = %q", addr), "a")); err != nil {
		t.Fatal(err)
	}
	mustReach(t, kafkatransport.Config{Brokers: []string{addr}}, kafkatransport.TopicsFor("", "a").Commands)
	if !strings.Contains(out.String(), "embedded Kafka broker without TLS/SASL: loopback demo only") {
		t.Fatalf("no plaintext warning in:\n%s", out.String())
	}
}

// TestEmbeddedSpecShowsNoSecret: the spec carries passwords but logs (as
// text or JSON) and prints as its address.
func TestEmbeddedSpecShowsNoSecret(t *testing.T) {
	spec := embeddedSpec{addr: "127.0.0.1:9092", mechanism: "PLAIN", users: map[string]string{"a": "sekrit-a"},
		client: kafkatransport.Config{SASL: &kafkatransport.SASL{Mechanism: "PLAIN", Username: "m", Password: "sekrit-m"}}}
	var out syncBuffer
	for _, json := range []bool{false, true} {
		hclog.New(&hclog.LoggerOptions{Output: &out, JSONFormat: json}).Info("started", "addr", spec)
	}
	fmt.Fprintf(&out, "%v %+v %#v %s", spec, spec, spec, spec)
	if s := out.String(); strings.Contains(s, "sekrit") || strings.Count(s, "127.0.0.1:9092") != 6 {
		t.Fatalf("spec shown as:\n%s", s)
	}
}

// TestEmbeddedConfigErrors: every mistake in the embedded broker's
// settings is reported on the attribute (or block) at fault.
func TestEmbeddedConfigErrors(t *testing.T) {
	dir := t.TempDir()
	servers := newTestPKI(t, dir, "servers")
	clients := newTestPKI(t, dir, "clients")
	other := newTestPKI(t, dir, "other")
	cert, key := servers.issue("broker", certOpts{ips: loopback})
	_, otherKey := servers.issue("other", certOpts{ips: loopback})
	namedCert, namedKey := servers.issue("named", certOpts{dns: []string{"broker.example"}})
	expiredCert, expiredKey := servers.issue("expired", certOpts{ips: loopback, notBefore: time.Now().Add(-2 * time.Hour), notAfter: time.Now().Add(-time.Hour)})
	remoteCert, remoteKey := servers.issue("remote", certOpts{ips: []net.IP{net.ParseIP("192.0.2.7")}})
	masterCert, masterKey := clients.issue("conveyor", certOpts{client: true})
	strangerCert, strangerKey := other.issue("conveyor", certOpts{client: true})
	garbage := dir + "/garbage.pem"
	writeFile(t, garbage, "not a certificate")

	const addr = "127.0.0.1:9092"
	masterSASL := "sasl {\n mechanism = \"SCRAM-SHA-512\"\n username = \"conveyor\"\n password = \"pw\"\n}\n"
	masterTLS := func(extra string) string { return fmt.Sprintf("tls {\n ca_file = %q\n%s}\n", servers.caFile, extra) }
	embTLS := func(cert, key, extra string) string {
		return fmt.Sprintf("tls {\n cert_file = %q\n key_file = %q\n%s}\n", cert, key, extra)
	}
	embedded := func(body string) string { return "embedded {\n" + body + "}\n" }
	users := "sasl {\n users = { a = \"a-pw\" }\n}\n"
	at := func(a string) string { return fmt.Sprintf("embedded_addr = %q\n", a) }

	cases := []struct {
		name, global string
		path         []string
	}{
		{"embedded block with brokers", "brokers = [\"127.0.0.1:1\"]\n" + embedded(""), []string{"embedded"}},
		{"client tls without broker tls", masterTLS(""), []string{"tls"}},
		{"broker tls without client tls", embedded(embTLS(cert, key, "")), []string{"embedded", "tls"}},
		{"missing cert", masterTLS("") + embedded(embTLS(dir+"/none.pem", key, "")), []string{"embedded", "tls", "cert_file"}},
		{"missing key", masterTLS("") + embedded(embTLS(cert, dir+"/none.pem", "")), []string{"embedded", "tls", "key_file"}},
		{"garbage cert", masterTLS("") + embedded(embTLS(garbage, key, "")), []string{"embedded", "tls", "cert_file"}},
		{"key of another cert", masterTLS("") + embedded(embTLS(cert, otherKey, "")), []string{"embedded", "tls", "key_file"}},
		{"expired cert", masterTLS("") + embedded(embTLS(expiredCert, expiredKey, "")), []string{"embedded", "tls", "cert_file"}},
		{"garbage client CA", masterTLS("") + embedded(embTLS(cert, key, fmt.Sprintf(" client_ca_file = %q\n", garbage))), []string{"embedded", "tls", "client_ca_file"}},
		{"master does not trust the broker", fmt.Sprintf("tls {\n ca_file = %q\n}\n", other.caFile) + embedded(embTLS(cert, key, "")), []string{"tls", "ca_file"}},
		{"cert does not name the address", masterTLS("") + embedded(embTLS(namedCert, namedKey, "")), []string{"tls", "ca_file"}},
		{"client CA without a master cert", masterTLS("") + embedded(embTLS(cert, key, fmt.Sprintf(" client_ca_file = %q\n", clients.caFile))), []string{"tls"}},
		{"master cert from another CA", masterTLS(fmt.Sprintf(" cert_file = %q\n key_file = %q\n", strangerCert, strangerKey)) + embedded(embTLS(cert, key, fmt.Sprintf(" client_ca_file = %q\n", clients.caFile))), []string{"tls", "cert_file"}},
		{"agent users without the master's", embedded(users), []string{"embedded", "sasl"}},
		{"master without password", "sasl {\n mechanism = \"PLAIN\"\n username = \"conveyor\"\n}\n", []string{"sasl", "password"}},
		{"unknown agent mechanism", masterSASL + embedded("sasl {\n mechanism = \"GSSAPI\"\n users = { a = \"pw\" }\n}\n"), []string{"embedded", "sasl", "mechanism"}},
		{"no users", masterSASL + embedded("sasl {\n users = {}\n}\n"), []string{"embedded", "sasl", "users"}},
		{"user is no node name", masterSASL + embedded("sasl {\n users = { \"a b\" = \"pw\" }\n}\n"), []string{"embedded", "sasl", "users"}},
		{"empty agent password", masterSASL + embedded("sasl {\n users = { a = \"\" }\n}\n"), []string{"embedded", "sasl", "users"}},
		{"agent named as the master", masterSASL + embedded("sasl {\n users = { conveyor = \"pw\" }\n}\n"), []string{"embedded", "sasl", "users"}},
		{"acls without users", masterSASL + embedded("acls = true\n"), []string{"embedded", "acls"}},
		{"beyond loopback in clear", at("192.0.2.7:9092") + masterSASL, []string{"embedded_addr"}},
		{"beyond loopback without SASL", at("192.0.2.7:9092") + masterTLS("") + embedded(embTLS(remoteCert, remoteKey, "")), []string{"embedded_addr"}},
		{"on every address", at("0.0.0.0:9092") + masterSASL + masterTLS("") + embedded(embTLS(cert, key, "")+users), []string{"embedded_addr"}},
	}
	l := New(testLogger(t))
	defer l.Close()
	for _, tc := range cases {
		cfg := config(t, dir, tc.global, "a")
		cfg.Host.ValidateOnly = true
		err := l.Configure(ctxT(t), cfg)
		var ces launcher.ConfigErrors
		if !errors.As(err, &ces) {
			t.Errorf("%s: %v, want ConfigErrors", tc.name, err)
			continue
		}
		found := false
		for _, ce := range ces {
			found = found || (reflect.DeepEqual(ce.Path, tc.path) && ce.Message != "")
		}
		if !found {
			t.Errorf("%s: errors %v, want one at %v", tc.name, ces, tc.path)
		} else {
			t.Logf("%s: %v", tc.name, err)
		}
	}

	valid := []struct{ name, global string }{
		{"TLS, SASL, ACLs", at(addr) + masterSASL + masterTLS("") + embedded(embTLS(cert, key, "")+users)},
		{"mutual TLS", at(addr) + masterTLS(fmt.Sprintf(" cert_file = %q\n key_file = %q\n", masterCert, masterKey)) + embedded(embTLS(cert, key, fmt.Sprintf(" client_ca_file = %q\n", clients.caFile)))},
		{"SASL only, loopback", at(addr) + masterSASL + embedded(users+"acls = false\n")},
		{"beyond loopback, secured", at("192.0.2.7:9092") + masterSASL + masterTLS("") + embedded(embTLS(remoteCert, remoteKey, "")+users)},
		{"name in the certificate, insecure client", at("localhost:9092") + "tls {\n insecure_skip_verify = true\n}\n" + embedded(embTLS(namedCert, namedKey, ""))},
	}
	for _, tc := range valid {
		cfg := config(t, dir, tc.global, "a")
		cfg.Host.ValidateOnly = true
		if err := l.Configure(ctxT(t), cfg); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// TestEmbeddedSpecDefaults: ACLs are on exactly when agents have users,
// unless the block says otherwise; the agents' mechanism defaults to
// SCRAM-SHA-512.
func TestEmbeddedSpecDefaults(t *testing.T) {
	masterSASL := "sasl {\n mechanism = \"scram-sha-256\"\n username = \"conveyor\"\n password = \"pw\"\n}\n"
	for _, tc := range []struct {
		global    string
		acls      bool
		mechanism string
		users     int
	}{
		{"", false, "", 0},
		{masterSASL, false, "", 0},
		{masterSASL + "embedded {\n sasl {\n users = { a = \"x\", b = \"y\" }\n }\n}\n", true, "SCRAM-SHA-512", 2},
		{masterSASL + "embedded {\n sasl {\n mechanism = \"plain\"\n users = { a = \"x\" }\n }\n acls = false\n}\n", false, "PLAIN", 1},
	} {
		g := defaults()
		if err := launcher.Decode(decode(t, tc.global, globalSpec()), &g); err != nil {
			t.Fatal(err)
		}
		set, errs := validate(g)
		if len(errs) > 0 {
			t.Fatalf("%q: %v", tc.global, errs)
		}
		s := set.embeddedAddr
		if s.acls != tc.acls || s.mechanism != tc.mechanism || len(s.users) != tc.users || s.addr != DefaultEmbeddedAddr {
			t.Errorf("%q: acls %v, mechanism %q, %d users, addr %q", tc.global, s.acls, s.mechanism, len(s.users), s.addr)
		}
		mech, user, ok := set.agentSASL("a")
		switch {
		case tc.users > 0 && (mech != tc.mechanism || user != "a" || !ok):
			t.Errorf("%q: agent a connects as %q %q %v", tc.global, mech, user, ok)
		case tc.users == 0 && set.transport.SASL != nil && (mech != DefaultAgentMechanism || user != "a" || !ok): // never the master's user
			t.Errorf("%q: agent a connects as %q %q %v", tc.global, mech, user, ok)
		case tc.users == 0 && set.transport.SASL == nil && ok:
			t.Errorf("%q: SASL without a sasl block", tc.global)
		}
	}
}

func TestEmbeddedSpecEqual(t *testing.T) {
	dir := t.TempDir()
	ca := newTestPKI(t, dir, "servers")
	cert, key := ca.issue("broker", certOpts{ips: loopback})
	cert2, key2 := ca.issue("broker2", certOpts{ips: loopback})
	base := embeddedSpec{addr: "127.0.0.1:1", mechanism: "PLAIN", users: map[string]string{"a": "x"}, acls: true, prefix: "p.",
		tls: mustBrokerTLS(t, embeddedTLSConfig{CertFile: cert, KeyFile: key})}
	same := base
	same.users = map[string]string{"a": "x"}
	same.tls = mustBrokerTLS(t, embeddedTLSConfig{CertFile: cert, KeyFile: key})
	if !base.equal(same) {
		t.Fatal("equal specs differ")
	}
	for name, change := range map[string]func(*embeddedSpec){
		"addr":      func(s *embeddedSpec) { s.addr = "127.0.0.1:2" },
		"password":  func(s *embeddedSpec) { s.users = map[string]string{"a": "y"} },
		"user":      func(s *embeddedSpec) { s.users = map[string]string{"a": "x", "b": "x"} },
		"mechanism": func(s *embeddedSpec) { s.mechanism = "SCRAM-SHA-256" },
		"acls":      func(s *embeddedSpec) { s.acls = false },
		"prefix":    func(s *embeddedSpec) { s.prefix = "q." },
		"no tls":    func(s *embeddedSpec) { s.tls = nil },
		"renewed certificate": func(s *embeddedSpec) {
			s.tls = mustBrokerTLS(t, embeddedTLSConfig{CertFile: cert2, KeyFile: key2})
		},
	} {
		o := base
		change(&o)
		if base.equal(o) {
			t.Errorf("a changed %s is the same spec", name)
		}
	}
}
