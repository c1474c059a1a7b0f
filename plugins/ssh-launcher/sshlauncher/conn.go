package sshlauncher

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/crypto/ssh"

	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// exitGrace bounds how long Recv, having hit the end of the agent's
// output, waits to learn whether the agent exited or the connection died.
const exitGrace = 5 * time.Second

// conn is the connection to one node's agent: frames over the SSH
// session's stdin and stdout. It implements launcher.Conn and
// launcher.Describer.
type conn struct {
	stream    *launcher.StreamConn
	node      string
	addr      string
	desc      string
	since     time.Time // when the agent started on the connection
	agentPath string
	workdir   string
	client    *ssh.Client
	sess      *ssh.Session
	stdin     io.WriteCloser
	stderr    *tail
	marker    *markerWriter
	logger    hclog.Logger
	keepalive time.Duration
	onClose   func()

	connDone chan struct{}
	connErr  error
	sessDone chan struct{}
	sessErr  error

	closing   atomic.Bool
	closeOnce sync.Once
	causeMu   sync.Mutex
	cause     error

	// helloSeen: a frame came from the agent. Until then helloTimer may
	// stop the agent, with helloErr as the reason.
	helloSeen  atomic.Bool
	helloTimer *time.Timer
	helloErr   error
}

func newConn(client *ssh.Client, sess *ssh.Session, s *settings, log hclog.Logger) (*conn, error) {
	stdin, err := sess.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("stdin pipe: %w", err)
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("stdout pipe: %w", err)
	}
	c := &conn{
		node:      s.Node,
		addr:      s.Addr(),
		desc:      s.Description(),
		client:    client,
		sess:      sess,
		stdin:     stdin,
		stderr:    &tail{max: 2048},
		logger:    log,
		keepalive: s.KeepaliveInterval,
		connDone:  make(chan struct{}),
		sessDone:  make(chan struct{}),
	}
	agentLog := log.Named("agent").StandardWriter(&hclog.StandardLoggerOptions{InferLevels: true})
	c.marker = &markerWriter{w: io.MultiWriter(agentLog, c.stderr), seen: make(chan struct{})}
	sess.Stderr = c.marker
	c.stream = launcher.NewStreamConn(stdout, stdin, c.shutdown, c.desc)
	return c, nil
}

// run watches the connection and the session; call after the session started.
func (c *conn) run() {
	go func() {
		c.connErr = c.client.Wait()
		close(c.connDone)
	}()
	go func() {
		c.sessErr = c.sess.Wait()
		close(c.sessDone)
	}()
	if c.keepalive > 0 {
		go c.keepaliveLoop()
	}
}

// Description implements launcher.Describer: user@host:port.
func (c *conn) Description() string { return c.desc }

// Send implements launcher.Conn.
func (c *conn) Send(frame []byte) error {
	if err := c.stream.Send(frame); err != nil {
		if c.closing.Load() {
			return fmt.Errorf("connection to node %s closed", c.node)
		}
		select {
		case <-c.connDone:
			return c.lost()
		default:
		}
		return fmt.Errorf("node %s: send to agent on %s: %w", c.node, c.desc, err)
	}
	return nil
}

// Recv implements launcher.Conn. When the agent's output ends it tells
// apart an agent that exited (io.EOF for status 0, an error with the status
// and its last stderr otherwise) and a connection that died ("ssh
// connection to HOST:PORT lost: CAUSE").
func (c *conn) Recv() ([]byte, error) {
	frame, err := c.stream.Recv()
	if err == nil {
		if !c.helloSeen.Swap(true) && c.helloTimer != nil {
			c.helloTimer.Stop()
		}
		return frame, nil
	}
	c.causeMu.Lock()
	helloErr := c.helloErr
	c.causeMu.Unlock()
	if helloErr != nil {
		return nil, helloErr
	}
	if c.closing.Load() {
		return nil, io.EOF
	}
	select {
	case <-c.connDone:
		return nil, c.lost()
	default:
	}
	if !errors.Is(err, io.EOF) {
		// A malformed frame, say: the stream cannot go on.
		return nil, fmt.Errorf("node %s: read from agent on %s: %w", c.node, c.desc, err)
	}
	timer := time.NewTimer(exitGrace)
	defer timer.Stop()
	select {
	case <-c.connDone:
		return nil, c.lost()
	case <-c.sessDone:
	case <-timer.C:
		return nil, fmt.Errorf("node %s: agent on %s closed its output", c.node, c.desc)
	}
	if c.closing.Load() {
		return nil, io.EOF
	}
	var missing *ssh.ExitMissingError
	var exit *ssh.ExitError
	switch {
	case c.sessErr == nil:
		return nil, io.EOF
	case errors.As(c.sessErr, &missing):
		// The channel closed without an exit status: usually the
		// connection going down, which the client learns a moment later.
		select {
		case <-c.connDone:
			return nil, c.lost()
		case <-timer.C:
			return nil, fmt.Errorf("node %s: ssh session on %s ended without an exit status", c.node, c.desc)
		}
	case errors.As(c.sessErr, &exit):
		msg := fmt.Sprintf("node %s: agent on %s exited: %s", c.node, c.desc, exit.Msg())
		if exit.Signal() != "" {
			msg = fmt.Sprintf("node %s: agent on %s killed by signal %s", c.node, c.desc, exit.Signal())
		} else if exit.ExitStatus() != 0 {
			msg = fmt.Sprintf("node %s: agent on %s exited with status %d", c.node, c.desc, exit.ExitStatus())
		}
		if t := c.stderr.String(); t != "" {
			msg += ": " + t
		}
		return nil, errors.New(msg)
	}
	return nil, fmt.Errorf("node %s: agent session on %s: %w", c.node, c.desc, c.sessErr)
}

// awaitHello gives the agent d from now to send its first frame (its
// Hello): an agent that does not (a prefix_command that never ends, an
// agent stuck before it speaks) is stopped with the connection, which ends
// its remote command (see watchdog), and Recv fails saying so.
func (c *conn) awaitHello(d time.Duration) {
	c.causeMu.Lock()
	defer c.causeMu.Unlock()
	c.helloTimer = time.AfterFunc(d, func() {
		if c.helloSeen.Load() || c.closing.Load() {
			return
		}
		err := fmt.Errorf("node %s: the agent on %s sent nothing within launch_timeout %s of its start (a prefix_command that does not end?): its remote command was stopped", c.node, c.desc, d)
		if t := c.stderr.String(); t != "" {
			err = fmt.Errorf("%w; its stderr: %s", err, t)
		}
		c.causeMu.Lock()
		c.helloErr = err
		c.causeMu.Unlock()
		c.logger.Error("launch abandoned: the agent did not start", "launch_timeout", d)
		_ = c.Close()
	})
}

// lost is the error of a connection that went down.
func (c *conn) lost() error {
	c.causeMu.Lock()
	cause := c.cause
	c.causeMu.Unlock()
	if cause == nil {
		cause = c.connErr
	}
	if cause == nil || errors.Is(cause, io.EOF) {
		cause = errors.New("connection closed by the remote end")
	}
	return fmt.Errorf("node %s: ssh connection to %s lost: %w", c.node, c.addr, cause)
}

// Close implements launcher.Conn: it ends the agent (its stdin closes, it
// gets SIGTERM where the server supports signals) and the connection.
func (c *conn) Close() error {
	return c.stream.Close()
}

func (c *conn) shutdown() error {
	c.closing.Store(true)
	c.causeMu.Lock()
	if c.helloTimer != nil {
		c.helloTimer.Stop()
	}
	c.causeMu.Unlock()
	// A connection closed before the remote script started its watchdog
	// could leave the script running: give it a moment to.
	wait := time.NewTimer(startWait)
	select {
	case <-c.marker.seen:
	case <-c.connDone:
	case <-c.sessDone:
	case <-wait.C:
	}
	wait.Stop()
	_ = c.sess.Signal(ssh.SIGTERM)
	_ = c.stdin.Close()
	_ = c.sess.Close()
	err := c.client.Close()
	if c.onClose != nil {
		c.onClose()
	}
	c.logger.Info("connection closed")
	if err != nil && !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "use of closed network connection") {
		return fmt.Errorf("close ssh connection to %s: %w", c.addr, err)
	}
	return nil
}

// keepaliveLoop sends an OpenSSH keepalive every interval and drops the
// connection when one is not answered within the next interval, so that a
// silently dead network shows up as a lost connection.
func (c *conn) keepaliveLoop() {
	ticker := time.NewTicker(c.keepalive)
	defer ticker.Stop()
	for {
		select {
		case <-c.connDone:
			return
		case <-ticker.C:
		}
		replied := make(chan error, 1)
		go func() {
			_, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil)
			replied <- err
		}()
		timer := time.NewTimer(c.keepalive)
		select {
		case <-c.connDone:
			timer.Stop()
			return
		case err := <-replied:
			timer.Stop()
			if err != nil {
				return // the connection is going down; Wait reports why
			}
		case <-timer.C:
			c.causeMu.Lock()
			c.cause = fmt.Errorf("no answer to a keepalive within %s", c.keepalive)
			c.causeMu.Unlock()
			c.logger.Warn("ssh keepalive unanswered, dropping the connection", "interval", c.keepalive)
			_ = c.client.Close()
			return
		}
	}
}

// startWait bounds how long Close waits for the remote script to start
// its watchdog.
const startWait = 5 * time.Second

// markerWriter passes the agent's stderr on, less a first line that is
// startMarker; seen closes once the first line is in (whatever it is).
type markerWriter struct {
	w    io.Writer
	mu   sync.Mutex
	buf  []byte
	done bool
	seen chan struct{}
}

func (m *markerWriter) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done {
		return m.w.Write(p)
	}
	m.buf = append(m.buf, p...)
	i := bytes.IndexByte(m.buf, '\n')
	if i < 0 && len(m.buf) < 4096 {
		return len(p), nil
	}
	m.done = true
	close(m.seen)
	rest := m.buf
	if i >= 0 && string(m.buf[:i]) == startMarker {
		rest = m.buf[i+1:]
	}
	m.buf = nil
	if len(rest) > 0 {
		if _, err := m.w.Write(rest); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// tail keeps the last bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(strings.Fields(strings.ReplaceAll(string(t.buf), "\n", " | ")), " ")
}
