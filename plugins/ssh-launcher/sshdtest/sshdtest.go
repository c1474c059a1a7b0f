// Package sshdtest runs a real OpenSSH sshd on a loopback port for tests:
// a throwaway host key, an authorized client key and a known_hosts file, all
// under the test's temporary directory. It can kill every session (to
// simulate a dropped connection), restart on the same port and change its
// host key. It needs /usr/sbin/sshd: without it the test fails under
// `make test` and is skipped under a plain `go test` (sdk/testenv).
package sshdtest

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/sdk/testenv"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHD is the sshd binary the servers run.
const SSHD = "/usr/sbin/sshd"

// startTimeout bounds how long a start may take before the test fails.
const startTimeout = 30 * time.Second

// Options adjusts a server.
type Options struct {
	// NoSFTP leaves out the sftp subsystem, so uploads must fall back to
	// exec sessions.
	NoSFTP bool
	// Password, when set, enables password (and keyboard-interactive)
	// authentication and gives the login user this password. Nothing on
	// the system changes: sshd runs in a private mount namespace where a
	// copy of /etc/shadow carrying the password's hash is mounted over the
	// real one. Needs unshare(1), mount(8) and openssl(1) (missing, they
	// fail the test under `make test`, see sdk/testenv) and root (the test
	// is skipped otherwise).
	Password string
	// NoKbdInteractive turns keyboard-interactive authentication off. By
	// default it is on, as in sshd's own default: with UsePAM no it has
	// no prompt to offer, and a client that tries it after a refused
	// password gets a bare failure.
	NoKbdInteractive bool
}

// Server is a running (or stopped) sshd.
type Server struct {
	// Host is the loopback address it listens on, Port its port.
	Host string
	Port int
	// User is the login user: the user running the test.
	User string
	// Dir holds the configuration, keys and logs.
	Dir string
	// ClientKeyFile is an unencrypted OpenSSH private key authorized to log in.
	ClientKeyFile string
	// ClientKey is that key.
	ClientKey ssh.Signer
	// KnownHostsFile lists the server's current host key for its address.
	KnownHostsFile string

	t    testing.TB
	opts Options

	mu      sync.Mutex
	hostKey ssh.PublicKey
	cmd     *exec.Cmd
	exited  chan struct{}
	log     bytes.Buffer
}

// Start starts sshd and stops it when the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	testenv.Command(t, SSHD, "openssh-server")
	u, err := user.Current()
	if err != nil {
		t.Fatalf("sshdtest: current user: %v", err)
	}
	if opts.Password != "" {
		// No package gives a non-root user a private mount: this skip
		// stays, and `make test` lists it in its skip summary.
		if os.Geteuid() != 0 {
			t.Skip("sshdtest: a password login needs root (to mount a private /etc/shadow in a mount namespace)")
		}
		testenv.Command(t, "unshare", "util-linux")
		testenv.Command(t, "mount", "mount")
		testenv.Command(t, "openssl", "openssl")
	}
	// The privilege separation directory; a fresh container lacks it.
	if os.Geteuid() == 0 {
		_ = os.MkdirAll("/run/sshd", 0o755)
	}
	s := &Server{Host: "127.0.0.1", User: u.Username, Dir: t.TempDir(), t: t, opts: opts}
	s.ClientKeyFile = filepath.Join(s.Dir, "client_key")
	s.KnownHostsFile = filepath.Join(s.Dir, "known_hosts")
	signer, pub := writeKey(t, s.ClientKeyFile)
	s.ClientKey = signer
	s.AuthorizeKey(pub)
	s.newHostKey()
	if opts.Password != "" {
		s.writeShadow()
	}
	t.Cleanup(s.Stop)

	var lastErr error
	for range 5 {
		s.Port = freePort(t)
		if lastErr = s.start(); lastErr == nil {
			return s
		}
	}
	t.Fatalf("sshdtest: start sshd: %v\n%s", lastErr, s.Log())
	return nil
}

// Addr is host:port.
func (s *Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// HostKey is the server's current host public key.
func (s *Server) HostKey() ssh.PublicKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hostKey
}

// HostKeyLine is the host key as "algorithm base64".
func (s *Server) HostKeyLine() string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.HostKey())))
}

// Log returns what sshd logged so far.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// AuthorizeKey lets key log in (sshd rereads authorized_keys on every login).
func (s *Server) AuthorizeKey(key ssh.PublicKey) {
	f, err := os.OpenFile(filepath.Join(s.Dir, "authorized_keys"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		s.t.Fatalf("sshdtest: %v", err)
	}
	defer f.Close()
	if _, err := f.Write(ssh.MarshalAuthorizedKey(key)); err != nil {
		s.t.Fatalf("sshdtest: %v", err)
	}
}

// RotateHostKey gives the server a new host key and restarts it;
// KnownHostsFile then lists the new key.
func (s *Server) RotateHostKey() {
	s.t.Helper()
	s.Stop()
	s.newHostKey()
	s.writeKnownHosts()
	if err := s.start(); err != nil {
		s.t.Fatalf("sshdtest: restart sshd: %v\n%s", err, s.Log())
	}
}

// Restart stops the server, with every session, and starts it again on
// the same port with the same keys.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("sshdtest: restart sshd: %v\n%s", err, s.Log())
	}
}

// Start starts a stopped server again on the same port.
func (s *Server) Start() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatalf("sshdtest: start sshd: %v\n%s", err, s.Log())
	}
}

// Stop kills sshd and every session; stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	killTree(cmd.Process.Pid, true)
	<-exited
}

// KillSessions kills every connection's sshd process and everything the
// sessions started, leaving the listener running: clients see their
// connection drop.
func (s *Server) KillSessions() {
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	killTree(cmd.Process.Pid, false)
}

// PauseSessions stops (SIGSTOP) every connection's processes: their TCP
// connections stay open but nothing answers, like a network that silently
// drops packets. Stop, Restart and KillSessions still end them.
func (s *Server) PauseSessions() {
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	for _, p := range descendants(cmd.Process.Pid) {
		_ = syscall.Kill(p, syscall.SIGSTOP)
	}
}

// Processes returns the command lines of every process sshd started
// (connection handlers, shells, the commands they run).
func (s *Server) Processes() []string {
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		return nil
	}
	var out []string
	for _, pid := range descendants(cmd.Process.Pid) {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && len(b) > 0 {
			out = append(out, strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " ")))
		}
	}
	return out
}

func (s *Server) newHostKey() {
	_, pub := writeKey(s.t, filepath.Join(s.Dir, "host_key"))
	s.mu.Lock()
	s.hostKey = pub
	s.mu.Unlock()
}

func (s *Server) writeKnownHosts() {
	line := knownhosts.Line([]string{knownhosts.Normalize(s.Addr())}, s.HostKey()) + "\n"
	if err := os.WriteFile(s.KnownHostsFile, []byte(line), 0o600); err != nil {
		s.t.Fatalf("sshdtest: %v", err)
	}
}

func (s *Server) writeConfig() string {
	sftpLine := "Subsystem sftp internal-sftp\n"
	if s.opts.NoSFTP {
		sftpLine = ""
	}
	password, kbd := "no", "yes"
	if s.opts.Password != "" {
		password = "yes"
	}
	if s.opts.NoKbdInteractive {
		kbd = "no"
	}
	cfg := fmt.Sprintf(`ListenAddress 127.0.0.1
Port %d
HostKey %s
PidFile none
AuthorizedKeysFile %s
StrictModes no
UsePAM no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication %s
KbdInteractiveAuthentication %s
PermitEmptyPasswords no
UseDNS no
MaxStartups 100
MaxSessions 100
LogLevel VERBOSE
%s`, s.Port, filepath.Join(s.Dir, "host_key"), filepath.Join(s.Dir, "authorized_keys"), password, kbd, sftpLine)
	file := filepath.Join(s.Dir, "sshd_config")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		s.t.Fatalf("sshdtest: %v", err)
	}
	return file
}

// writeShadow writes a copy of /etc/shadow in which the login user has
// the configured password.
func (s *Server) writeShadow() {
	cmd := exec.Command("openssl", "passwd", "-6", "-stdin")
	cmd.Stdin = strings.NewReader(s.opts.Password + "\n")
	hash, err := cmd.Output()
	if err != nil {
		s.t.Fatalf("sshdtest: openssl passwd: %v", err)
	}
	orig, err := os.ReadFile("/etc/shadow")
	if err != nil {
		s.t.Fatalf("sshdtest: read /etc/shadow: %v", err)
	}
	var out []string
	found := false
	for _, line := range strings.Split(strings.TrimRight(string(orig), "\n"), "\n") {
		f := strings.Split(line, ":")
		if len(f) > 1 && f[0] == s.User {
			f[1] = strings.TrimSpace(string(hash))
			line = strings.Join(f, ":")
			found = true
		}
		out = append(out, line)
	}
	if !found {
		s.t.Skipf("sshdtest: user %s has no /etc/shadow entry", s.User)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "shadow"), []byte(strings.Join(out, "\n")+"\n"), 0o600); err != nil {
		s.t.Fatalf("sshdtest: %v", err)
	}
}

// start runs sshd on s.Port and waits until it listens.
func (s *Server) start() error {
	cfg := s.writeConfig()
	s.writeKnownHosts()
	var cmd *exec.Cmd
	if s.opts.Password != "" {
		script := "mount --bind " + quote(filepath.Join(s.Dir, "shadow")) + " /etc/shadow && exec " + SSHD + " -D -e -f " + quote(cfg)
		cmd = exec.Command("unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script)
	} else {
		cmd = exec.Command(SSHD, "-D", "-e", "-f", cfg)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	ready := make(chan struct{})
	var readyOnce sync.Once
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.log.WriteString(line + "\n")
			s.mu.Unlock()
			if strings.Contains(line, "Server listening on") {
				readyOnce.Do(func() { close(ready) })
			}
		}
		_ = cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()

	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case <-ready:
		return nil
	case <-exited:
		s.mu.Lock()
		s.cmd = nil
		s.mu.Unlock()
		return fmt.Errorf("sshd exited during start: %v", cmd.ProcessState)
	case <-timer.C:
		s.Stop()
		return errors.New("sshd did not report listening in time")
	}
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// freePort returns a loopback port nothing listens on right now.
func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// writeKey writes a new ed25519 private key in OpenSSH format.
func writeKey(t testing.TB, file string) (ssh.Signer, ssh.PublicKey) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "sshdtest")
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	return signer, sshPub
}

// descendants lists the pids of every descendant of pid, parents first.
func descendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		rest := string(b[bytes.LastIndexByte(b, ')')+1:])
		f := strings.Fields(rest)
		if len(f) < 2 || f[0] == "Z" {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], p)
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// killTree kills pid's descendants and, with self, pid.
func killTree(pid int, self bool) {
	if self {
		// First the listener, so it starts no new connection handler.
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
	for _, p := range descendants(pid) {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	if self {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}
