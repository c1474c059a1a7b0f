package hostkey

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func edKey(t *testing.T) ssh.PublicKey {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func ecKey(t *testing.T) ssh.PublicKey {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var remote = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2222}

const addr = "127.0.0.1:2222"

func TestManual(t *testing.T) {
	good, bad := edKey(t), edKey(t)
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(good)))
	k, err := ParseKey(line)
	if err != nil {
		t.Fatal(err)
	}
	v := NewManual(k)
	if err := v.Callback()(addr, remote, good); err != nil {
		t.Fatal(err)
	}
	err = v.Callback()(addr, remote, bad)
	var he *Error
	if !errors.As(err, &he) || !strings.Contains(err.Error(), ssh.FingerprintSHA256(bad)) || !strings.Contains(err.Error(), ssh.FingerprintSHA256(good)) {
		t.Fatalf("wrong key: %v", err)
	}
	if algs := v.Algorithms(addr); !slices.Equal(algs, []string{ssh.KeyAlgoED25519}) {
		t.Errorf("Algorithms = %v", algs)
	}
	if _, err := ParseKey("ssh-ed25519"); err == nil {
		t.Error("ParseKey accepted a key without data")
	}
}

func TestKnownHostsAlgorithms(t *testing.T) {
	ec, ed := ecKey(t), edKey(t)
	file := filepath.Join(t.TempDir(), "known_hosts")
	content := knownhosts.Line([]string{knownhosts.Normalize(addr)}, ec) + "\n" +
		knownhosts.Line([]string{"other.example"}, ed) + "\n"
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := NewKnownHosts(file)
	if err != nil {
		t.Fatal(err)
	}
	// Only the key type known for this address is negotiated.
	if algs := v.Algorithms(addr); !slices.Equal(algs, []string{ec.Type()}) {
		t.Errorf("Algorithms = %v, want [%s]", algs, ec.Type())
	}
	if algs := v.Algorithms("unknown.example:22"); algs != nil {
		t.Errorf("Algorithms for an unknown host = %v, want nil", algs)
	}
	if err := v.Callback()(addr, remote, ec); err != nil {
		t.Fatal(err)
	}
	if err := v.Callback()(addr, remote, ed); !IsVerificationError(err) || !strings.Contains(err.Error(), "expected") {
		t.Fatalf("mismatch: %v", err)
	}
	if err := v.Callback()("10.9.9.9:22", &net.TCPAddr{IP: net.IPv4(10, 9, 9, 9), Port: 22}, ed); !IsVerificationError(err) || !strings.Contains(err.Error(), "is not in") {
		t.Fatalf("unknown host: %v", err)
	}
	if _, err := NewKnownHosts(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing known_hosts accepted")
	}
}

func TestRSAAlgorithms(t *testing.T) {
	got := algorithmsFor([]string{ssh.KeyAlgoRSA, ssh.KeyAlgoED25519})
	want := []string{ssh.KeyAlgoED25519, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	if !slices.Equal(got, want) {
		t.Errorf("algorithmsFor = %v, want %v", got, want)
	}
}

func TestTrustOnFirstUse(t *testing.T) {
	file := filepath.Join(t.TempDir(), "data", "known_hosts")
	v, err := NewTrustOnFirstUse(file)
	if err != nil {
		t.Fatal(err)
	}
	first, second := edKey(t), ecKey(t)
	if err := v.Callback()(addr, remote, first); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if err := v.Callback()(addr, remote, first); err != nil {
		t.Fatalf("same key again: %v", err)
	}
	if algs := v.Algorithms(addr); !slices.Equal(algs, []string{first.Type()}) {
		t.Errorf("Algorithms = %v", algs)
	}
	err = v.Callback()(addr, remote, second)
	if !IsVerificationError(err) || !strings.Contains(err.Error(), "changed") ||
		!strings.Contains(err.Error(), ssh.FingerprintSHA256(first)) || !strings.Contains(err.Error(), ssh.FingerprintSHA256(second)) {
		t.Fatalf("changed key: %v", err)
	}
	// Another port of the same host is another server.
	other := &net.TCPAddr{IP: remote.IP, Port: 2223}
	if err := v.Callback()("127.0.0.1:2223", other, second); err != nil {
		t.Fatalf("other port: %v", err)
	}
	// A new verifier (a restarted plugin) remembers.
	v2, err := NewTrustOnFirstUse(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := v2.Callback()(addr, remote, second); !IsVerificationError(err) {
		t.Fatalf("changed key after restart: %v", err)
	}
}

func TestNone(t *testing.T) {
	var out strings.Builder
	v := NewNone(hclog.New(&hclog.LoggerOptions{Output: &out}))
	if err := v.Callback()(addr, remote, edKey(t)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "NOT verified") {
		t.Errorf("no warning logged: %q", out.String())
	}
}
