package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/store"
)

// writePEM writes one PEM block to dir/name and returns its path.
func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// brokerPKI makes a CA and a broker certificate for 127.0.0.1; it returns
// the files' paths.
func brokerPKI(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "conveyor e2e CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "broker"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, "ca.pem", "CERTIFICATE", caDER), writePEM(t, dir, "broker.pem", "CERTIFICATE", leafDER),
		writePEM(t, dir, "broker-key.pem", "EC PRIVATE KEY", keyDER)
}

// TestSecureEmbeddedBroker: the embedded broker with TLS, a SASL user per
// node and ACLs; the master connects as the superuser through the
// launcher's tls and sasl blocks, real agents with -tls-ca and SCRAM. An
// agent with its own user builds; an agent of node k2 holding k1's user is
// refused k2's topics and never comes online; a plaintext agent cannot
// connect at all.
func TestSecureEmbeddedBroker(t *testing.T) {
	pki := t.TempDir()
	caFile, certFile, keyFile := brokerPKI(t, pki)
	kafka := fmt.Sprintf(`
  tls { ca_file = %q }
  sasl {
    mechanism = "SCRAM-SHA-512"
    username  = "conveyor"
    password  = "the master's password"
  }
  embedded {
    tls {
      cert_file = %q
      key_file  = %q
    }
    sasl {
      mechanism = "SCRAM-SHA-512"
      users     = { "k1" = "k1's password", "k2" = "k2's password" }
    }
    acls = true
  }`, caFile, certFile, keyFile)
	c := cluster.Start(t, cluster.Options{Bin: bin, Kafka: kafka,
		Nodes: kafkaNode("k1", "30s", "5m") + kafkaNode("k2", "30s", "5m"),
		Jobs:  job("secure", "k1", "echo over TLS and SCRAM")})
	password := func(node, pw string) string {
		path := filepath.Join(pki, node+".password")
		if err := os.WriteFile(path, []byte(pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	secure := func(user, pw string) []string {
		return []string{"-tls-ca", caFile, "-sasl-mechanism", "SCRAM-SHA-512", "-sasl-user", user, "-sasl-password-file", password(user, pw)}
	}

	c.StartAgent("k1", c.Secret("k1"), secure("k1", "k1's password")...)
	c.WaitOnline("k1")
	b := c.WaitBuild("secure", trigger(t, c, "secure"), buildGuard)
	if b.Status != store.StatusSuccess {
		t.Fatalf("build over TLS and SCRAM: %s (%s)", b.Status, b.Reason)
	}
	checkLog(t, c, b, []byte("over TLS and SCRAM\n"))

	// k2's agent with k1's credentials: the ACLs refuse k2's topics.
	c.StartAgent("k2", c.Secret("k2"), secure("k1", "k1's password")...)
	// A plaintext agent for k2: no TLS, no SASL.
	c.StartAgent("k2", c.Secret("k2"))
	agentLog := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(c.Dir, "agents", "k2", name))
		return string(b)
	}
	c.WaitFor("k2's agents to be refused", 2*time.Minute, func() bool {
		return strings.Contains(strings.ToLower(agentLog("agent.log")), "authoriz") && strings.Contains(agentLog("agent-2.log"), "reconnecting")
	})
	for _, name := range []string{"agent.log", "agent-2.log"} {
		for _, line := range strings.Split(agentLog(name), "\n") {
			if strings.Contains(line, "reconnecting") {
				t.Logf("%s: %s", name, line)
				break
			}
		}
	}
	if st := c.Node("k2"); st.State == nodes.StateOnline {
		t.Fatalf("node k2 is online with k1's Kafka user or without TLS: %+v", st)
	}
}
