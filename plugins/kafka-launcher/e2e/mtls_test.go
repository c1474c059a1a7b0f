package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkalauncher"
)

// clientCA is a CA that issues client certificates.
type clientCA struct {
	t    *testing.T
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// File is the CA certificate's path (embedded.tls.client_ca_file).
	File   string
	serial int64
}

// newClientCA makes a CA named name in dir.
func newClientCA(t *testing.T, dir, name string) *clientCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &clientCA{t: t, dir: dir, cert: cert, key: key, serial: 1,
		File: writePEM(t, dir, name+".pem", "CERTIFICATE", der)}
}

// issue writes a client certificate for cn and its key to certFile and
// keyFile.
func (ca *clientCA) issue(cn, certFile, keyFile string) {
	ca.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		ca.t.Fatal(err)
	}
	ca.serial++
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(ca.serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		ca.t.Fatal(err)
	}
	writePEM(ca.t, filepath.Dir(certFile), filepath.Base(certFile), "CERTIFICATE", der)
	writePEM(ca.t, filepath.Dir(keyFile), filepath.Base(keyFile), "EC PRIVATE KEY", keyDER)
}

// agentFileFlags are the flags of the agent command naming files in the
// directory the agent starts in.
var agentFileFlags = []string{"-secret-file", "-tls-cert", "-tls-key", "-sasl-password-file"}

// TestAgentMTLS: the embedded broker requires client certificates
// (embedded.tls.client_ca_file) on top of TLS, SCRAM users per node and
// ACLs. The agent command `conveyor secret` prints names the node's own
// user and certificate files, never the master's; an agent started by it,
// with its own certificate from the client CA, connects and runs a build.
// An agent of another node with the right SCRAM password but no
// certificate, and one whose certificate another CA signed, are refused by
// the broker and the node never comes online.
func TestAgentMTLS(t *testing.T) {
	pki := t.TempDir()
	caFile, brokerCert, brokerKey := brokerPKI(t, pki)
	clients := newClientCA(t, pki, "clients")
	masterCert, masterKey := filepath.Join(pki, "master.pem"), filepath.Join(pki, "master-key.pem")
	clients.issue("conveyor master", masterCert, masterKey)
	kafka := fmt.Sprintf(`
  tls {
    ca_file   = %q
    cert_file = %q
    key_file  = %q
  }
  sasl {
    mechanism = "SCRAM-SHA-512"
    username  = "conveyor"
    password  = "the master's password"
  }
  embedded {
    tls {
      cert_file      = %q
      key_file       = %q
      client_ca_file = %q
    }
    sasl {
      users = { "k1" = "k1's password", "k2" = "k2's password" }
    }
  }`, caFile, masterCert, masterKey, brokerCert, brokerKey, clients.File)
	c := cluster.Start(t, cluster.Options{Bin: bin, Kafka: kafka,
		Nodes: kafkaNode("k1", "30s", "5m") + kafkaNode("k2", "30s", "5m"),
		Jobs:  job("mtls", "k1", "echo over mutual TLS")})

	// The command conveyor secret prints for k1.
	sec, err := c.API.Secret(context.Background(), "k1")
	if err != nil {
		t.Fatal(err)
	}
	cmd := sec.AgentCommand
	for _, want := range [][]string{
		{"-tls-ca", caFile},
		{"-tls-cert", kafkalauncher.AgentTLSCertFile, "-tls-key", kafkalauncher.AgentTLSKeyFile},
		{"-sasl-mechanism", "SCRAM-SHA-512", "-sasl-user", "k1", "-sasl-password-file", kafkalauncher.AgentSASLPasswordFile},
	} {
		if !containsRun(cmd, want) {
			t.Fatalf("agent command %q lacks %q", cmd, want)
		}
	}
	for _, master := range []string{masterCert, masterKey, "conveyor", "the master's password"} {
		if slices.Contains(cmd, master) {
			t.Fatalf("agent command %q names the master's %q", cmd, master)
		}
	}

	// Follow it: the files it names in the agent's directory, its flags
	// after the harness's own; only the work directory is the test's.
	dir := filepath.Join(c.Dir, "agents", "k1")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	clients.issue("k1", filepath.Join(dir, kafkalauncher.AgentTLSCertFile), filepath.Join(dir, kafkalauncher.AgentTLSKeyFile))
	files := map[string]string{kafkalauncher.AgentSecretFile: sec.Secret, kafkalauncher.AgentSASLPasswordFile: "k1's password"}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	args := slices.Clone(cmd[1:])
	for i := 0; i+1 < len(args); i++ {
		switch {
		case slices.Contains(agentFileFlags, args[i]):
			args[i+1] = filepath.Join(dir, args[i+1])
		case args[i] == "-workdir":
			args[i+1] = filepath.Join(dir, "work")
		}
	}
	c.StartAgent("k1", sec.Secret, args...)
	c.WaitOnline("k1")
	b := c.WaitBuild("mtls", trigger(t, c, "mtls"), buildGuard)
	if b.Status != store.StatusSuccess {
		t.Fatalf("build over mutual TLS: %s (%s)", b.Status, b.Reason)
	}
	checkLog(t, c, b, []byte("over mutual TLS\n"))

	// k2's agents: the right CA and SCRAM password, but no certificate;
	// then a certificate another CA signed.
	k2pw := filepath.Join(pki, "k2.password")
	if err := os.WriteFile(k2pw, []byte("k2's password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	scram := []string{"-tls-ca", caFile, "-sasl-mechanism", "SCRAM-SHA-512", "-sasl-user", "k2", "-sasl-password-file", k2pw}
	c.StartAgent("k2", c.Secret("k2"), scram...)
	strangerCert, strangerKey := filepath.Join(pki, "stranger.pem"), filepath.Join(pki, "stranger-key.pem")
	newClientCA(t, pki, "another CA").issue("k2", strangerCert, strangerKey)
	c.StartAgent("k2", c.Secret("k2"), append(scram, "-tls-cert", strangerCert, "-tls-key", strangerKey)...)
	refused := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(c.Dir, "agents", "k2", name))
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "reconnecting") {
				return line
			}
		}
		return ""
	}
	c.WaitFor("k2's agents to be refused", 2*time.Minute, func() bool {
		return refused("agent.log") != "" && refused("agent-2.log") != ""
	})
	for _, name := range []string{"agent.log", "agent-2.log"} {
		line := refused(name)
		t.Logf("%s: %s", name, line)
		if !strings.Contains(line, "tls") && !strings.Contains(line, "certificate") {
			t.Errorf("%s: refused for another reason than its certificate: %s", name, line)
		}
	}
	if st := c.Node("k2"); st.State == nodes.StateOnline {
		t.Fatalf("node k2 is online without a certificate of the client CA: %+v", st)
	}
}

// containsRun reports whether want appears in s as consecutive elements.
func containsRun(s, want []string) bool {
	for i := 0; i+len(want) <= len(s); i++ {
		if slices.Equal(s[i:i+len(want)], want) {
			return true
		}
	}
	return false
}
