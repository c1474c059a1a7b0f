// Package hostkey implements the ways the SSH launcher verifies the host key
// a build machine presents: against a known_hosts file, against a key written
// in the configuration, trust on first use (the first key seen is stored and
// any later change refused), or not at all.
package hostkey

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Strategy names, as written in the configuration.
const (
	KnownHosts      = "known_hosts"
	Manual          = "manual"
	TrustOnFirstUse = "trust_on_first_use"
	None            = "none"
)

// Strategies lists the valid strategy names.
var Strategies = []string{KnownHosts, Manual, TrustOnFirstUse, None}

// Verifier checks the host key of one SSH server.
type Verifier interface {
	// Strategy names the verification strategy.
	Strategy() string
	// Callback is the ssh.ClientConfig.HostKeyCallback.
	Callback() ssh.HostKeyCallback
	// Algorithms returns the host key algorithms to negotiate with addr
	// (host:port), most preferred first, so that the server presents a key
	// of a type the verifier knows; nil means the library's default.
	Algorithms(addr string) []string
}

// Error is a refused host key. Want holds the fingerprints of the keys that
// were expected (empty when the host is unknown), Got that of the key the
// server presented.
type Error struct {
	Strategy string
	Addr     string
	Got      string
	Want     []string
	// Source names where the expected keys come from (a file, the
	// configuration).
	Source string
}

// Error implements error.
func (e *Error) Error() string {
	if len(e.Want) == 0 {
		return fmt.Sprintf("host key verification (%s) failed: %s is not in %s (it presented %s)", e.Strategy, e.Addr, e.Source, e.Got)
	}
	if e.Strategy == TrustOnFirstUse {
		return fmt.Sprintf("host key verification (%s) failed: the host key of %s changed: stored %s, presented %s; remove its entry from %s if the change is expected",
			e.Strategy, e.Addr, strings.Join(e.Want, ", "), e.Got, e.Source)
	}
	return fmt.Sprintf("host key verification (%s) failed: %s presented %s, expected %s (from %s)", e.Strategy, e.Addr, e.Got, strings.Join(e.Want, " or "), e.Source)
}

// Fingerprint is the OpenSSH SHA256 fingerprint of key, prefixed with its type.
func Fingerprint(key ssh.PublicKey) string {
	return key.Type() + " " + ssh.FingerprintSHA256(key)
}

// algorithmsFor lists the signature algorithms that can verify keys of the
// given types, in a stable order.
func algorithmsFor(keyTypes []string) []string {
	seen := map[string]bool{}
	var algs []string
	add := func(a ...string) {
		for _, x := range a {
			if !seen[x] {
				seen[x] = true
				algs = append(algs, x)
			}
		}
	}
	sort.Strings(keyTypes)
	for _, t := range keyTypes {
		switch t {
		case ssh.KeyAlgoRSA:
			add(ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		case ssh.CertAlgoRSAv01:
			add(ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01, ssh.CertAlgoRSAv01)
		default:
			add(t)
		}
	}
	return algs
}

// ParseKey parses a public key written as "algorithm base64 [comment]", the
// format of authorized_keys and of ssh-keyscan output without the host name.
func ParseKey(s string) (ssh.PublicKey, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("empty host key")
	}
	key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s))
	if err != nil {
		return nil, fmt.Errorf(`parse host key (want "algorithm base64", such as "ssh-ed25519 AAAA..."): %w`, err)
	}
	return key, nil
}

// NewManual returns a verifier accepting exactly key.
func NewManual(key ssh.PublicKey) Verifier {
	return &manual{key: key}
}

type manual struct{ key ssh.PublicKey }

func (m *manual) Strategy() string { return Manual }

func (m *manual) Algorithms(string) []string { return algorithmsFor([]string{m.key.Type()}) }

func (m *manual) Callback() ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		if bytes.Equal(key.Marshal(), m.key.Marshal()) {
			return nil
		}
		return &Error{Strategy: Manual, Addr: hostname, Got: Fingerprint(key), Want: []string{Fingerprint(m.key)}, Source: "the configured host_key"}
	}
}

// NewNone returns a verifier that accepts any key, logging a warning with
// its fingerprint every time.
func NewNone(logger hclog.Logger) Verifier {
	return &none{logger: logger}
}

type none struct{ logger hclog.Logger }

func (n *none) Strategy() string           { return None }
func (n *none) Algorithms(string) []string { return nil }

func (n *none) Callback() ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		n.logger.Warn("host key NOT verified (host_key_verification strategy \"none\"): the connection is open to man-in-the-middle attacks",
			"addr", hostname, "key", Fingerprint(key))
		return nil
	}
}

// NewKnownHosts returns a verifier that checks keys against an OpenSSH
// known_hosts file. The file is read now; a missing or malformed file is an
// error.
func NewKnownHosts(file string) (Verifier, error) {
	cb, err := knownhosts.New(file)
	if err != nil {
		return nil, fmt.Errorf("read known_hosts file: %w", err)
	}
	return &knownHosts{file: file, cb: cb}, nil
}

type knownHosts struct {
	file string
	cb   ssh.HostKeyCallback
}

func (k *knownHosts) Strategy() string { return KnownHosts }

func (k *knownHosts) Algorithms(addr string) []string {
	return algorithmsFor(knownKeyTypes(k.cb, addr))
}

func (k *knownHosts) Callback() ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		return translate(k.cb(hostname, remote, key), KnownHosts, hostname, key, k.file)
	}
}

// translate turns a knownhosts error into an *Error.
func translate(err error, strategy, addr string, key ssh.PublicKey, source string) error {
	if err == nil {
		return nil
	}
	var ke *knownhosts.KeyError
	if errors.As(err, &ke) {
		e := &Error{Strategy: strategy, Addr: addr, Got: Fingerprint(key), Source: source}
		for _, w := range ke.Want {
			e.Want = append(e.Want, fmt.Sprintf("%s (%s:%d)", Fingerprint(w.Key), w.Filename, w.Line))
		}
		return e
	}
	var re *knownhosts.RevokedError
	if errors.As(err, &re) {
		return &Error{Strategy: strategy, Addr: addr, Got: Fingerprint(key) + " (revoked)", Want: []string{"a key not marked @revoked"}, Source: source}
	}
	return fmt.Errorf("host key verification (%s): %w", strategy, err)
}

// knownKeyTypes returns the types of the keys cb knows for addr, by asking
// it about a key it cannot know: its KeyError lists the known ones.
func knownKeyTypes(cb ssh.HostKeyCallback, addr string) []string {
	probe := probeKey()
	if probe == nil {
		return nil
	}
	remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
	if host, _, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); ip != nil {
			remote.IP = ip
		}
	}
	var ke *knownhosts.KeyError
	if err := cb(addr, remote, probe); !errors.As(err, &ke) {
		return nil
	}
	var types []string
	for _, w := range ke.Want {
		types = append(types, w.Key.Type())
	}
	return types
}

var (
	probeOnce sync.Once
	probe     ssh.PublicKey
)

// probeKey is a fixed public key that no known_hosts file lists.
func probeKey() ssh.PublicKey {
	probeOnce.Do(func() {
		// 32 zero bytes are a syntactically valid ed25519 public key.
		k, err := ssh.ParsePublicKey(ssh.Marshal(struct {
			Name string
			Key  []byte
		}{ssh.KeyAlgoED25519, make([]byte, 32)}))
		if err == nil {
			probe = k
		}
	})
	return probe
}

// NewTrustOnFirstUse returns a verifier that stores the first key each
// host:port presents in file (known_hosts format, created if missing) and
// refuses any other key later.
func NewTrustOnFirstUse(file string) (Verifier, error) {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, fmt.Errorf("trust on first use store: %w", err)
	}
	f, err := os.OpenFile(file, os.O_CREATE|os.O_RDONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("trust on first use store: %w", err)
	}
	f.Close()
	t := &tofu{file: file}
	if _, err := t.load(); err != nil {
		return nil, err
	}
	return t, nil
}

// NewApprovedFirstUse returns a trust-on-first-use verifier whose first
// key of a host is stored only once an operator approved it: a host whose
// key is not in file yet is refused with a *PendingError naming its
// fingerprint, unless that fingerprint is among approved (SHA256
// fingerprints, ssh.FingerprintSHA256), and then stored. A stored key is
// checked as NewTrustOnFirstUse checks it.
func NewApprovedFirstUse(file string, approved []string) (Verifier, error) {
	v, err := NewTrustOnFirstUse(file)
	if err != nil {
		return nil, err
	}
	t := v.(*tofu)
	t.approval, t.approved = true, approved
	return t, nil
}

// PendingError is a host's first key waiting for an operator's approval
// (NewApprovedFirstUse).
type PendingError struct {
	Addr string
	// Fingerprint is the key's SHA256 fingerprint ("SHA256:...").
	Fingerprint string
	// Type is the key's type (ssh-ed25519...).
	Type string
}

// Error implements error.
func (e *PendingError) Error() string {
	return fmt.Sprintf("host key verification (%s, require_approval) waits for an admin: %s presented %s %s for the first time; approve it with conveyor node approve-key NODE %s (or in the node's page)",
		TrustOnFirstUse, e.Addr, e.Type, e.Fingerprint, e.Fingerprint)
}

// tofuMu serialises every trust-on-first-use store of the process: nodes
// sharing a store must not both append a first key.
var tofuMu sync.Mutex

type tofu struct {
	file string
	// approval: a first key is stored only when its fingerprint is in
	// approved.
	approval bool
	approved []string
}

func (t *tofu) Strategy() string { return TrustOnFirstUse }

func (t *tofu) load() (ssh.HostKeyCallback, error) {
	cb, err := knownhosts.New(t.file)
	if err != nil {
		return nil, fmt.Errorf("read trust on first use store: %w", err)
	}
	return cb, nil
}

func (t *tofu) Algorithms(addr string) []string {
	tofuMu.Lock()
	defer tofuMu.Unlock()
	cb, err := t.load()
	if err != nil {
		return nil
	}
	return algorithmsFor(knownKeyTypes(cb, addr))
}

func (t *tofu) Callback() ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		tofuMu.Lock()
		defer tofuMu.Unlock()
		cb, err := t.load()
		if err != nil {
			return err
		}
		err = cb(hostname, remote, key)
		var ke *knownhosts.KeyError
		if errors.As(err, &ke) && len(ke.Want) == 0 {
			if fp := ssh.FingerprintSHA256(key); t.approval && !slices.Contains(t.approved, fp) {
				return &PendingError{Addr: hostname, Fingerprint: fp, Type: key.Type()}
			}
			return t.store(hostname, key)
		}
		return translate(err, TrustOnFirstUse, hostname, key, t.file)
	}
}

// store appends the first key seen for addr.
func (t *tofu) store(addr string, key ssh.PublicKey) error {
	f, err := os.OpenFile(t.file, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("store host key: %w", err)
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, knownhosts.Line([]string{knownhosts.Normalize(addr)}, key))
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("store host key: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("store host key: %w", err)
	}
	return f.Close()
}

// IsVerificationError reports whether err is (or wraps) a refused host key.
func IsVerificationError(err error) bool {
	var e *Error
	return errors.As(err, &e)
}
