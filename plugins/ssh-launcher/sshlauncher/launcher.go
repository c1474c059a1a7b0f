// Package sshlauncher is the SSH launcher: for each node it connects to the
// build machine over SSH, verifies its host key, uploads the agent binary
// when the remote copy is missing or differs, starts the agent with
// `-transport stdio` and carries wire frames over the session's stdin and
// stdout.
package sshlauncher

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/crypto/ssh"

	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/hostkey"
	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/upload"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// Version is the plugin's version, set by the build.
var Version = "0.1.0"

// Launcher implements launcher.Launcher over SSH.
type Launcher struct {
	logger hclog.Logger

	mu            sync.Mutex
	configured    bool
	host          launcher.Host
	global        globalConfig
	agentBinary   string
	agentPlatform Platform
	running       map[string]*conn
	launches      map[string]int64 // agents started per node
	// refused remembers, per node, a launch refused for good (credentials,
	// host key) and the material it was refused with: while that stays the
	// same, Launch answers without contacting the machine again.
	refused map[string]refusal

	uploads atomic.Int64
}

// New returns an unconfigured SSH launcher logging to logger.
func New(logger hclog.Logger) *Launcher {
	return &Launcher{logger: logger.Named("ssh"), running: map[string]*conn{}, launches: map[string]int64{}, refused: map[string]refusal{}}
}

// Uploads counts the agent uploads this launcher made.
func (l *Launcher) Uploads() int64 { return l.uploads.Load() }

// Info implements launcher.Launcher.
func (l *Launcher) Info(context.Context) (*launcher.Info, error) {
	return &launcher.Info{
		Name:         "ssh",
		Version:      Version,
		Description:  "starts each node's agent on a build machine over SSH and carries frames over the session's stdin/stdout",
		Capabilities: []string{launcher.CapStats},
	}, nil
}

// Schema implements launcher.Launcher.
func (l *Launcher) Schema(context.Context) (*launcher.Schema, error) {
	return schema(), nil
}

// Configure implements launcher.Launcher: it checks every node's settings
// (credentials and known_hosts files are read now) and the agent binary.
func (l *Launcher) Configure(_ context.Context, cfg *launcher.Config) error {
	var g globalConfig
	if err := cfg.DecodeGlobal(&g); err != nil {
		return fmt.Errorf("global block: %w", err)
	}
	errs := &errorList{}
	var bin string
	var plat Platform
	if len(cfg.Nodes) > 0 || g.AgentBinary != nil {
		var ce *launcher.ConfigError
		if bin, plat, ce = agentBinary(g); ce != nil {
			errs.add(ce.Node, ce.Message, ce.Path...)
		}
	}
	for _, n := range cfg.Nodes {
		var nc nodeConfig
		if err := n.Decode(&nc); err != nil {
			return fmt.Errorf("node %q: %w", n.Name, err)
		}
		r := &resolver{host: cfg.Host, global: g, node: n.Name, nc: nc, errs: errs, validateOnly: cfg.Host.ValidateOnly, logger: l.logger.Named(n.Name)}
		r.resolve()
	}
	if len(errs.errs) > 0 {
		return errs.errs
	}
	if cfg.Host.ValidateOnly {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.configured = true
	l.host = cfg.Host
	l.global = g
	l.agentBinary, l.agentPlatform = bin, plat
	return nil
}

// Launch implements launcher.Launcher.
func (l *Launcher) Launch(ctx context.Context, node *launcher.Node) (launcher.Conn, error) {
	var nc nodeConfig
	if err := node.Decode(&nc); err != nil {
		return nil, err
	}
	l.mu.Lock()
	configured, host, g := l.configured, l.host, l.global
	bin, plat := l.agentBinary, l.agentPlatform
	l.mu.Unlock()
	if !configured {
		return nil, errors.New("launch before Configure")
	}
	log := l.logger.Named(node.Name)
	errs := &errorList{}
	s := (&resolver{host: host, global: g, node: node.Name, nc: nc, errs: errs, logger: log, approved: node.ApprovedKeys}).resolve()
	if len(errs.errs) > 0 {
		return nil, errs.errs
	}
	if bin == "" {
		var ce *launcher.ConfigError
		if bin, plat, ce = agentBinary(g); ce != nil {
			return nil, launcher.ConfigErrors{*ce}
		}
	}
	// A node runs one agent: a relaunch replaces the previous one.
	l.stop(node.Name)

	log = log.With("addr", s.Addr(), "user", s.User)
	if s.Verifier.Strategy() == hostkey.None {
		log.Warn(`host key verification is off (strategy "none"): anyone able to intercept the connection can impersonate this build machine`)
	}
	material := s.material()
	if err := l.refusedBefore(node.Name, material); err != nil {
		return nil, launcher.Permanent(err)
	}
	start := time.Now()
	client, err := connect(ctx, s, log)
	if err != nil {
		if launcher.IsPermanent(err) {
			l.refuse(node.Name, material, err, log)
		}
		return nil, err
	}
	l.mu.Lock()
	delete(l.refused, node.Name)
	l.mu.Unlock()
	// Until the agent runs, ctx's end or launch_timeout abandons the launch
	// (closing the connection ends what it started remotely).
	stopWatch := context.AfterFunc(ctx, func() { client.Close() })
	var timedOut atomic.Bool
	timer := time.AfterFunc(s.LaunchTimeout, func() {
		timedOut.Store(true)
		client.Close()
	})
	c, err := l.startAgent(client, s, bin, plat, log)
	timer.Stop()
	if !stopWatch() || timedOut.Load() {
		if c != nil {
			c.Close()
		}
		client.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("launch on %s abandoned: %w", s.Description(), context.Cause(ctx))
		}
		return nil, fmt.Errorf("starting the agent on %s took longer than launch_timeout %s (last step: %v)", s.Description(), s.LaunchTimeout, err)
	}
	if err != nil {
		client.Close()
		return nil, err
	}
	log.Info("agent started", "agent", c.agentPath, "workdir", c.workdir, "took", time.Since(start).Round(time.Millisecond).String())
	c.since = time.Now()
	c.awaitHello(s.LaunchTimeout)
	l.mu.Lock()
	l.running[node.Name] = c
	l.launches[node.Name]++
	l.mu.Unlock()
	c.onClose = func() {
		l.mu.Lock()
		if l.running[node.Name] == c {
			delete(l.running, node.Name)
		}
		l.mu.Unlock()
	}
	return c, nil
}

// LinkStats implements launcher.LinkStater: the node's SSH connection
// (user@host:port) and since when its agent runs on it.
func (l *Launcher) LinkStats(_ context.Context, node string) (*launcher.LinkStats, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := &launcher.LinkStats{Reconnects: max(l.launches[node]-1, 0)}
	if c := l.running[node]; c != nil {
		st.Connected, st.Endpoint, st.Since = true, "ssh "+c.desc, c.since
	}
	return st, nil
}

// Teardown implements launcher.Launcher: it closes the node's session and
// connection, which ends the remote agent.
func (l *Launcher) Teardown(_ context.Context, node string) error {
	l.stop(node)
	return nil
}

func (l *Launcher) stop(node string) {
	l.mu.Lock()
	c := l.running[node]
	delete(l.running, node)
	l.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}

// refusal is a launch refused for good, and the material it was refused
// with (settings.material).
type refusal struct {
	material [32]byte
	err      error
}

// refusedBefore returns the error of the node's last launch when it was
// refused for good with the same material.
func (l *Launcher) refusedBefore(node string, material [32]byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r, ok := l.refused[node]; ok && r.material == material {
		return r.err
	}
	return nil
}

// refuse remembers a launch refused for good and logs it, once per change
// of the material: it is an operator's matter (a possible man in the
// middle, a changed password), not a network hiccup.
func (l *Launcher) refuse(node string, material [32]byte, err error, log hclog.Logger) {
	l.mu.Lock()
	l.refused[node] = refusal{material: material, err: err}
	l.mu.Unlock()
	log.Error("launch refused: not retried until the node's configuration, its key or known_hosts file changes (or the server restarts)", "error", err)
}

// connect dials s with retries: each attempt is bounded by launch_timeout,
// failures other than a refused host key or refused credentials are retried
// max_retries times, retry_wait apart.
func connect(ctx context.Context, s *settings, log hclog.Logger) (*ssh.Client, error) {
	for attempt := 0; ; attempt++ {
		client, err := dial(ctx, s)
		if err == nil {
			return client, nil
		}
		if launcher.IsPermanent(err) {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connect to %s: %w (last error: %v)", s.Description(), context.Cause(ctx), err)
		}
		if attempt >= s.MaxRetries {
			return nil, fmt.Errorf("connect to %s failed after %d attempt(s): %w", s.Description(), attempt+1, err)
		}
		log.Warn("connect failed, retrying", "attempt", attempt+1, "attempts", s.MaxRetries+1, "retry_wait", s.RetryWait, "error", err)
		t := time.NewTimer(s.RetryWait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("connect to %s: %w (last error: %v)", s.Description(), context.Cause(ctx), err)
		case <-t.C:
		}
	}
}

// dial makes one connection attempt: TCP, SSH handshake, host key check
// and authentication, all within launch_timeout.
func dial(ctx context.Context, s *settings) (*ssh.Client, error) {
	// tried lists the authentication methods the server let us try, in
	// order: a handshake that fails after one of them failed on the
	// credentials, not on the network.
	var triedMu sync.Mutex
	var tried []string
	try := func(method string) {
		triedMu.Lock()
		tried = append(tried, method)
		triedMu.Unlock()
	}
	cfg := &ssh.ClientConfig{
		User:              s.User,
		HostKeyCallback:   s.Verifier.Callback(),
		HostKeyAlgorithms: s.Verifier.Algorithms(s.Addr()),
		ClientVersion:     "SSH-2.0-Conveyor_" + Version,
		Timeout:           s.LaunchTimeout,
	}
	if s.Signer != nil {
		signer := s.Signer
		cfg.Auth = append(cfg.Auth, ssh.PublicKeysCallback(func() ([]ssh.Signer, error) {
			try("publickey")
			return []ssh.Signer{signer}, nil
		}))
	}
	if s.Password != "" {
		pw := s.Password
		cfg.Auth = append(cfg.Auth, ssh.PasswordCallback(func() (string, error) {
			try("password")
			return pw, nil
		}), ssh.KeyboardInteractive(func(_, _ string, questions []string, echos []bool) ([]string, error) {
			try("keyboard-interactive")
			answers := make([]string, len(questions))
			for i := range questions {
				if !echos[i] {
					answers[i] = pw
				}
			}
			return answers, nil
		}))
	}
	dctx, cancel := context.WithTimeout(ctx, s.LaunchTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(dctx, "tcp", s.Addr())
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return nil, fmt.Errorf("dial %s: no connection within launch_timeout %s", s.Addr(), s.LaunchTimeout)
		}
		return nil, fmt.Errorf("dial %s: %w", s.Addr(), err)
	}
	stop := context.AfterFunc(dctx, func() { nc.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(nc, s.Addr(), cfg)
	if !stop() {
		if sc != nil {
			sc.Close()
		}
		nc.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("ssh handshake with %s: %w", s.Addr(), context.Cause(ctx))
		}
		return nil, fmt.Errorf("ssh handshake with %s: not done within launch_timeout %s", s.Addr(), s.LaunchTimeout)
	}
	if err != nil {
		nc.Close()
		triedMu.Lock()
		methods := strings.Join(tried, ", ")
		triedMu.Unlock()
		var pending *hostkey.PendingError
		switch {
		case errors.As(err, &pending):
			return nil, launcher.ApprovalPending(pending.Fingerprint, fmt.Errorf("connect to %s: %w", s.Addr(), pending))
		case hostkey.IsVerificationError(err):
			return nil, launcher.Permanent(fmt.Errorf("connect to %s: %w", s.Addr(), unwrapHandshake(err)))
		case authRefused(err, methods != ""):
			if methods == "" {
				methods = "none"
			}
			return nil, launcher.Permanent(fmt.Errorf("connect to %s: authentication as %q refused (tried %s): %w", s.Addr(), s.User, methods, err))
		}
		return nil, fmt.Errorf("ssh handshake with %s: %w", s.Addr(), err)
	}
	return ssh.NewClient(sc, chans, reqs), nil
}

// authRefused tells a handshake that failed on the credentials from one
// the network broke: the library's "unable to authenticate" once every
// method failed, or a protocol error after a method was tried (with
// keyboard-interactive offered but no prompt, as OpenSSH does with UsePAM
// no, a refused password ends in "unexpected message type 51").
func authRefused(err error, triedOne bool) bool {
	msg := err.Error()
	if strings.Contains(msg, "unable to authenticate") {
		return true
	}
	if !triedOne || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return false
	}
	return strings.Contains(msg, "unexpected message")
}

// unwrapHandshake returns the *hostkey.Error inside err, dropping the
// library's "ssh: handshake failed" prefix.
func unwrapHandshake(err error) error {
	var he *hostkey.Error
	if errors.As(err, &he) {
		return he
	}
	return err
}

// startAgent checks the remote platform, uploads the agent when needed and
// starts it.
func (l *Launcher) startAgent(client *ssh.Client, s *settings, bin string, plat Platform, log hclog.Logger) (*conn, error) {
	out, err := upload.Run(client, `uname -sm && printf '%s\n' "$HOME"`, nil)
	if err != nil {
		return nil, fmt.Errorf("probe %s: %w", s.Description(), err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 2 {
		return nil, fmt.Errorf("probe %s: unexpected output %q", s.Description(), out)
	}
	remote, err := ParseUname(lines[0])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.Description(), err)
	}
	if !plat.Runs(remote) {
		return nil, fmt.Errorf("%s runs %s but the agent binary %s is built for %s: set agent_binary to a build for %s (GOOS=%s GOARCH=%s)",
			s.Description(), remote, bin, plat, remote, remote.OS, remote.Arch)
	}
	home := strings.TrimSpace(lines[len(lines)-1])
	if !strings.HasPrefix(home, "/") {
		return nil, fmt.Errorf("probe %s: home directory %q is not an absolute path", s.Description(), home)
	}
	agentPath := expandRemote(s.AgentPath, home)
	workdir := expandRemote(s.Workdir, home)

	res, err := upload.Ensure(client, bin, agentPath, log.Named("upload"))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.Description(), err)
	}
	if res.Uploaded {
		l.uploads.Add(1)
		log.Info("agent uploaded", "path", agentPath, "method", res.Method, "bytes", res.Size, "sha256", res.SHA256)
	}

	sess, err := client.NewSession()
	if err != nil {
		return nil, fmt.Errorf("%s: open session: %w", s.Description(), err)
	}
	c, err := newConn(client, sess, s, log)
	if err != nil {
		sess.Close()
		return nil, err
	}
	c.agentPath, c.workdir = agentPath, workdir
	envEnd := envTerminator()
	cmd := agentCommand(s, agentPath, workdir, envEnd)
	log.Debug("starting agent", "command", cmd, "env", envNames(s.Env))
	if err := sess.Start(cmd); err != nil {
		sess.Close()
		return nil, fmt.Errorf("%s: start agent: %w", s.Description(), err)
	}
	if len(s.Env) > 0 {
		// The values go over stdin, never on a command line (ps on the
		// build host shows command lines to every user).
		if _, err := io.WriteString(c.stdin, envScript(s.Env, envEnd)); err != nil {
			sess.Close()
			return nil, fmt.Errorf("%s: hand the agent its env: %w", s.Description(), err)
		}
	}
	c.run()
	return c, nil
}

// watchdog runs beside the agent on the build host, as
// `/bin/sh -c watchdog conveyor-ssh-watchdog PGID PPID`: once the sshd
// process that ran the launch command is gone (the connection closed:
// Teardown, an abandoned launch, the master or the plugin stopped or
// killed, the network lost), it ends the launch command's process group
// (sshd makes each session's command a session leader), so that nothing
// the launcher started remotely outlives its connection: not the agent,
// not a prefix_command that never started it.
//
// A parent that is already init (the connection closed before the script
// ran) counts as gone.
const watchdog = `trap "" TERM; while [ "$2" != 1 ] && { kill -0 "$2" 2>/dev/null || ps -p "$2" >/dev/null 2>&1; }; do sleep 1; done; kill -TERM -"$1" 2>/dev/null; sleep 5; kill -KILL -"$1" 2>/dev/null`

// startMarker is the first line the remote script writes to stderr, once
// its watchdog runs: closing the connection before it could leave the
// script running with no watchdog, so Close waits for it (a moment).
const startMarker = "conveyor-ssh-launcher: watchdog running"

// agentCommand is the remote shell command that starts the agent: a
// /bin/sh script that starts the watchdog, says so on stderr, reads the env (when there is
// one) from stdin up to the line envEnd, then changes to the workdir and
// runs the agent, through prefix_command when one is set.
func agentCommand(s *settings, agentPath, workdir, envEnd string) string {
	q := upload.Quote
	var b strings.Builder
	// One line, as before: a csh login shell refuses newlines in quotes.
	b.WriteString("/bin/sh -c " + q(watchdog) + ` conveyor-ssh-watchdog $$ $PPID </dev/null >/dev/null 2>&1 & `)
	b.WriteString("echo " + q(startMarker) + " >&2; ")
	if len(s.Env) > 0 {
		b.WriteString(`nl=$(printf '\nx'); nl=${nl%x}; e=; while IFS= read -r l && [ "$l" != ` + q(envEnd) + ` ]; do e="$e$l$nl"; done; eval "$e"; unset e l nl; `)
	}
	b.WriteString("mkdir -p " + q(workdir) + " && cd " + q(workdir) + " && ")
	if s.PrefixCommand == "" {
		// exec: the agent is the session's process and gets its signals.
		b.WriteString("exec ")
	} else {
		b.WriteString(s.PrefixCommand + " ")
	}
	b.WriteString(q(agentPath) + " -transport stdio -name " + q(s.Node) + " -workdir " + q(workdir))
	if s.SuffixCommand != "" {
		b.WriteString(" " + s.SuffixCommand)
	}
	return "exec /bin/sh -c " + q(b.String())
}

// envScript is what agentCommand's script reads from stdin: the env as
// shell exports, then the line envEnd.
func envScript(env map[string]string, envEnd string) string {
	keys := envNames(env)
	var b strings.Builder
	b.WriteString("export")
	for _, k := range keys {
		b.WriteString(" " + k + "=" + upload.Quote(env[k]))
	}
	b.WriteString("\n" + envEnd + "\n")
	return b.String()
}

// envTerminator is a line no env value holds by chance.
func envTerminator() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "CONVEYOR_ENV_END_" + hex.EncodeToString(b[:])
}

// envNames returns the env's names, sorted: what may be logged of it.
func envNames(env map[string]string) []string {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
