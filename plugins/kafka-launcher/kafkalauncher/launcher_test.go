package kafkalauncher

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/conveyor-ci/conveyor/sdk/launcher"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// startPlugin starts the plugin binary the way the host does.
func startPlugin(t *testing.T) *launcher.Process {
	t.Helper()
	p, err := launcher.Start(ctxT(t), launcher.ClientOptions{Path: pluginBin, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("start plugin: %v", err)
	}
	t.Cleanup(p.Kill)
	if p.Secrets == nil || !p.Info.Has(launcher.CapSecrets) || !p.Info.Has(launcher.CapPurge) {
		t.Fatalf("plugin capabilities %v, secrets %v", p.Info.Capabilities, p.Secrets)
	}
	return p
}

func TestMasterKeyAndSecrets(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	global := fmt.Sprintf("embedded_addr = %q", addr)
	p := startPlugin(t)
	if err := p.Launcher.Configure(ctxT(t), config(t, dir, global, "a", "b")); err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, MasterKeyFile)
	st, err := os.Stat(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Size() != MasterKeySize {
		t.Fatalf("master key mode %v size %d", st.Mode(), st.Size())
	}
	key, _ := os.ReadFile(keyPath)

	sa, err := p.Secrets.NodeSecret(ctxT(t), "a")
	if err != nil {
		t.Fatal(err)
	}
	sa2, _ := p.Secrets.NodeSecret(ctxT(t), "a")
	sb, _ := p.Secrets.NodeSecret(ctxT(t), "b")
	m := hmac.New(sha256.New, key)
	m.Write([]byte("a"))
	if !bytes.Equal(sa.Secret, m.Sum(nil)) || !bytes.Equal(sa.Secret, sa2.Secret) {
		t.Fatal("node secret is not HMAC-SHA256(master key, node)")
	}
	if bytes.Equal(sa.Secret, sb.Secret) {
		t.Fatal("two nodes share a secret")
	}
	want := []string{"conveyor-agent", "-name", "a", "-secret-file", "secret", "-brokers", addr, "-workdir", AgentWorkdir}
	if !reflect.DeepEqual(sa.AgentCommand, want) {
		t.Fatalf("agent command %q, want %q", sa.AgentCommand, want)
	}

	// A restarted plugin keeps the key, so the secrets stay.
	p.Kill()
	p = startPlugin(t)
	if err := p.Launcher.Configure(ctxT(t), config(t, dir, global, "a")); err != nil {
		t.Fatal(err)
	}
	sa3, err := p.Secrets.NodeSecret(ctxT(t), "a")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sa.Secret, sa3.Secret) {
		t.Fatal("secret changed across a plugin restart")
	}
	p.Kill()

	// A key readable by others, or truncated, is refused.
	if err := os.Chmod(keyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	l := New(testLogger(t))
	defer l.Close()
	if err := l.Configure(ctxT(t), config(t, dir, global)); err == nil || !strings.Contains(err.Error(), "mode 0644") {
		t.Fatalf("world-readable key: %v", err)
	}
	if err := os.WriteFile(keyPath, key[:10], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(keyPath, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := l.Configure(ctxT(t), config(t, dir, global)); err == nil || !strings.Contains(err.Error(), "10 bytes") {
		t.Fatalf("short key: %v", err)
	}
	if _, err := l.NodeSecret(ctxT(t), "a"); err == nil {
		t.Fatal("NodeSecret answered without a configuration")
	}
}

// TestAgentCommandFlags: the agent command carries the node's own Kafka
// identity, never the master's: its own SASL user (conveyor-agent-NODE on
// an external cluster, as `conveyor kafka acls` grants by default; the
// user named after the node on the embedded broker) and, where the brokers
// ask for client certificates, its own certificate files; of the master's
// tls block only the CA.
func TestAgentCommandFlags(t *testing.T) {
	masterTLS := &kafkatransport.TLS{CAFile: "/etc/ca.pem", CertFile: "/etc/master.pem", KeyFile: "/etc/master-key.pem"}
	masterSASL := &kafkatransport.SASL{Mechanism: "SCRAM-SHA-256", Username: "conveyor", Password: "never-shown"}
	withClientCAs := &brokerTLS{clientCAs: x509.NewCertPool()}
	for _, tc := range []struct {
		name string
		set  *settings
		want []string
	}{{
		name: "external cluster with mTLS and SASL",
		set: &settings{transport: kafkatransport.Config{Brokers: []string{"k1:9093", "k2:9093"}, TopicPrefix: "ci.",
			TLS: &kafkatransport.TLS{CAFile: "/etc/ca.pem", CertFile: "/etc/master.pem", KeyFile: "/etc/master-key.pem", InsecureSkipVerify: true}, SASL: masterSASL}},
		want: []string{"conveyor-agent", "-name", "n1", "-secret-file", "secret", "-brokers", "k1:9093,k2:9093",
			"-topic-prefix", "ci.",
			"-tls-ca", "/etc/ca.pem", "-tls-cert", "agent.pem", "-tls-key", "agent-key.pem", "-tls-insecure-skip-verify",
			"-sasl-mechanism", "SCRAM-SHA-256", "-sasl-user", "conveyor-agent-n1", "-sasl-password-file", "sasl-password",
			"-workdir", AgentWorkdir},
	}, {
		name: "external cluster, TLS against the system roots",
		set:  &settings{transport: kafkatransport.Config{Brokers: []string{"k1:9093"}, TLS: &kafkatransport.TLS{}}},
		want: []string{"conveyor-agent", "-name", "n1", "-secret-file", "secret", "-brokers", "k1:9093", "-tls", "-workdir", AgentWorkdir},
	}, {
		name: "embedded broker with client certificates and agent users",
		set: &settings{embedded: true, transport: kafkatransport.Config{Brokers: []string{"127.0.0.1:9092"}, TLS: masterTLS, SASL: masterSASL},
			embeddedAddr: embeddedSpec{tls: withClientCAs, mechanism: "PLAIN", users: map[string]string{"n1": "pw"}, acls: true}},
		want: []string{"conveyor-agent", "-name", "n1", "-secret-file", "secret", "-brokers", "127.0.0.1:9092",
			"-tls-ca", "/etc/ca.pem", "-tls-cert", "agent.pem", "-tls-key", "agent-key.pem",
			"-sasl-mechanism", "PLAIN", "-sasl-user", "n1", "-sasl-password-file", "sasl-password",
			"-workdir", AgentWorkdir},
	}, {
		name: "embedded broker with TLS but no client certificates, master SASL only",
		set: &settings{embedded: true, transport: kafkatransport.Config{Brokers: []string{"127.0.0.1:9092"}, TLS: masterTLS, SASL: masterSASL},
			embeddedAddr: embeddedSpec{tls: &brokerTLS{}}},
		want: []string{"conveyor-agent", "-name", "n1", "-secret-file", "secret", "-brokers", "127.0.0.1:9092",
			"-tls-ca", "/etc/ca.pem",
			"-sasl-mechanism", DefaultAgentMechanism, "-sasl-user", "n1", "-sasl-password-file", "sasl-password",
			"-workdir", AgentWorkdir},
	}, {
		name: "embedded broker, plaintext",
		set:  &settings{embedded: true, transport: kafkatransport.Config{Brokers: []string{"127.0.0.1:9092"}}},
		want: []string{"conveyor-agent", "-name", "n1", "-secret-file", "secret", "-brokers", "127.0.0.1:9092", "-workdir", AgentWorkdir},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := agentCommand(tc.set, "n1")
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %q\nwant %q", got, tc.want)
			}
			for _, master := range []string{"never-shown", "conveyor", "/etc/master.pem", "/etc/master-key.pem"} {
				if slices.Contains(got, master) {
					t.Fatalf("the master's %q on the agent's command line: %q", master, got)
				}
			}
		})
	}
}

func TestValidateOnlyStartsNothing(t *testing.T) {
	dir := t.TempDir()
	cfg := config(t, dir, fmt.Sprintf("embedded_addr = %q", freeAddr(t)), "a")
	cfg.Host.ValidateOnly = true
	l := New(testLogger(t))
	defer l.Close()
	if err := l.Configure(ctxT(t), cfg); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Fatalf("validation wrote %v", entries)
	}
	if l.broker != nil {
		t.Fatal("validation started a broker")
	}
}

func TestConfigErrorPaths(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		global string
		path   []string
	}{
		{`partitions = 0`, []string{"partitions"}},
		{`partitions = 2.5`, []string{"partitions"}},
		{`replication_factor = 0`, []string{"replication_factor"}},
		{`replication_factor = 3`, []string{"replication_factor"}}, // embedded: one broker
		{`topic_prefix = "bad prefix"`, []string{"topic_prefix"}},
		{`topic_prefix = "conveyor"`, []string{"topic_prefix"}}, // would cover "conveyorX." (MasterACLs)
		{`embedded_addr = "10.0.0.1:9092"`, []string{"embedded_addr"}},
		{`embedded_addr = "127.0.0.1"`, []string{"embedded_addr"}},
		{`brokers = ["kafka"]`, []string{"brokers"}},
		{"brokers = [\"127.0.0.1:1\"]\nsasl {\n mechanism = \"OAUTHBEARER\"\n username = \"u\"\n}", []string{"sasl", "mechanism"}},
		{"brokers = [\"127.0.0.1:1\"]\nsasl {\n mechanism = \"PLAIN\"\n username = \"\"\n}", []string{"sasl", "username"}},
		{"brokers = [\"127.0.0.1:1\"]\ntls {\n ca_file = \"/nonexistent.pem\"\n}", []string{"tls", "ca_file"}},
		{"brokers = [\"127.0.0.1:1\"]\ntls {\n ca_file = \"" + garbage + "\"\n}", []string{"tls", "ca_file"}},
		{"brokers = [\"127.0.0.1:1\"]\ntls {\n cert_file = \"" + garbage + "\"\n}", []string{"tls", "key_file"}},
		{"tls {\n insecure_skip_verify = true\n}", []string{"tls"}}, // embedded: no TLS
	}
	l := New(testLogger(t))
	defer l.Close()
	for _, tc := range cases {
		cfg := config(t, dir, tc.global, "a")
		cfg.Host.ValidateOnly = true
		err := l.Configure(ctxT(t), cfg)
		var ces launcher.ConfigErrors
		if !errors.As(err, &ces) {
			t.Errorf("%q: %v, want ConfigErrors", tc.global, err)
			continue
		}
		found := false
		for _, ce := range ces {
			found = found || (reflect.DeepEqual(ce.Path, tc.path) && ce.Message != "")
		}
		if !found {
			t.Errorf("%q: errors %v, want one at %v", tc.global, ces, tc.path)
		}
	}
	// A complete valid configuration passes validation.
	ca := filepath.Join(dir, "ca.pem")
	writeCA(t, ca)
	cfg := config(t, dir, "brokers = [\"127.0.0.1:1\"]\ntopic_prefix = \"ci.\"\npartitions = 3\nreplication_factor = 3\ntls {\n ca_file = \""+ca+"\"\n}\nsasl {\n mechanism = \"scram-sha-256\"\n username = \"u\"\n password = \"p\"\n}", "a")
	cfg.Host.ValidateOnly = true
	if err := l.Configure(ctxT(t), cfg); err != nil {
		t.Fatalf("valid configuration: %v", err)
	}
}

func TestPurgeDeletesTopics(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	l := New(testLogger(t))
	defer l.Close()
	if err := l.Configure(ctxT(t), config(t, dir, fmt.Sprintf("embedded_addr = %q\ntopic_prefix = \"p.\"", addr), "gone", "kept")); err != nil {
		t.Fatal(err)
	}
	tcfg := kafkatransport.Config{Brokers: []string{addr}, TopicPrefix: "p."}
	gone := kafkatransport.TopicsFor("p.", "gone")
	kept := kafkatransport.TopicsFor("p.", "kept")
	for _, topic := range []string{gone.Commands, gone.Events, kept.Commands, kept.Events} {
		if ok, err := kafkatransport.TopicExists(ctxT(t), tcfg, topic); err != nil || !ok {
			t.Fatalf("topic %s after Configure: exists=%v err=%v", topic, ok, err)
		}
	}
	conn, err := l.Launch(ctxT(t), &launcher.Node{Name: "gone", Config: decode(t, "", nodeSpec())})
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Send([]byte("x")); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := l.Purge(ctxT(t), "gone"); err != nil {
			t.Fatalf("Purge: %v", err)
		}
	}
	if err := conn.Send([]byte("x")); !errors.Is(err, kafkatransport.ErrClosed) {
		t.Fatalf("connection survived Purge: %v", err)
	}
	for _, topic := range []string{gone.Commands, gone.Events} {
		if ok, err := kafkatransport.TopicExists(ctxT(t), tcfg, topic); err != nil || ok {
			t.Fatalf("topic %s after Purge: exists=%v err=%v", topic, ok, err)
		}
	}
	for _, topic := range []string{kept.Commands, kept.Events} {
		if ok, err := kafkatransport.TopicExists(ctxT(t), tcfg, topic); err != nil || !ok {
			t.Fatalf("other node's topic %s after Purge: exists=%v err=%v", topic, ok, err)
		}
	}
	// A purged node can come back: Launch recreates its topics.
	conn, err = l.Launch(ctxT(t), &launcher.Node{Name: "gone", Config: decode(t, "", nodeSpec())})
	if err != nil {
		t.Fatalf("Launch after Purge: %v", err)
	}
	_ = conn.Close()
}

// TestEmbeddedDataSurvivesRestart kills the plugin hard (as a crash would)
// and checks that a restarted plugin, on the same data directory and port,
// still has the frame the agent sent before.
func TestEmbeddedDataSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	global := fmt.Sprintf("embedded_addr = %q", addr)
	tcfg := kafkatransport.Config{Brokers: []string{addr}}

	p := startPlugin(t)
	if err := p.Launcher.Configure(ctxT(t), config(t, dir, global, "persist")); err != nil {
		t.Fatal(err)
	}
	agent, err := kafkatransport.DialAgent(ctxT(t), tcfg, "persist", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Send([]byte("sent before the restart")); err != nil {
		t.Fatal(err)
	}
	_ = agent.Close()
	if err := syscall.Kill(p.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.Kill()

	start := time.Now()
	p = startPlugin(t)
	if err := p.Launcher.Configure(ctxT(t), config(t, dir, global, "persist")); err != nil {
		t.Fatalf("Configure after restart: %v", err)
	}
	t.Logf("restart on the same port and data: %v", time.Since(start))
	conn, err := p.Launcher.Launch(ctxT(t), &launcher.Node{Name: "persist", Config: decode(t, "", nodeSpec())})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got := make(chan []byte, 1)
	go func() {
		b, _ := conn.Recv()
		got <- b
	}()
	select {
	case b := <-got:
		if string(b) != "sent before the restart" {
			t.Fatalf("got %q", b)
		}
	case <-time.After(testTimeout):
		t.Fatal("frame sent before the restart never arrived")
	}
}

// writeCA writes a self-signed certificate to path.
func writeCA(t *testing.T, path string) {
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
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestPurgeExternalReportsWhatItLeaves: against an external cluster the
// master may not administer ACLs or users (MasterACLs), so purge deletes
// the node's topics and groups and says precisely what it left: the
// agent's principal, and how an administrator removes its ACLs and user.
func TestPurgeExternalReportsWhatItLeaves(t *testing.T) {
	const mech = kafkatransport.MechanismSCRAMSHA512
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(), kfake.Superuser(mech, "conveyor", "master-pw"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	var logs syncBuffer
	l := New(hclog.New(&hclog.LoggerOptions{Name: "test", Level: hclog.Info, Output: &logs}))
	defer l.Close()
	global := fmt.Sprintf("brokers = [%q]\nsasl {\n mechanism = %q\n username = \"conveyor\"\n password = \"master-pw\"\n}", cluster.ListenAddrs()[0], mech)
	if err := l.Configure(ctxT(t), config(t, t.TempDir(), global)); err != nil {
		t.Fatal(err)
	}
	if err := l.Purge(ctxT(t), "gone"); err != nil {
		t.Fatalf("purge: %v", err)
	}
	out := logs.String()
	for _, want := range []string{
		"purge: the node's Kafka user and ACLs on the external cluster are left",
		"principal=User:conveyor-agent-gone",
		"kafka-acls.sh --remove --allow-principal User:conveyor-agent-gone",
		"kafka-configs.sh --alter --delete-config SCRAM-SHA-512 --entity-type users --entity-name conveyor-agent-gone",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %q:\n%s", want, out)
		}
	}
}
