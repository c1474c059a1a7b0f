package kafkalauncher

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/IBM/sarama"
	"github.com/hashicorp/go-hclog"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// bindRetry is how long a start keeps retrying a port still held by a
// previous plugin process that just died.
const bindRetry = 10 * time.Second

// authStateFiles are the files in which kfake keeps its SASL users and its
// ACLs across restarts. The embedded broker's users and ACLs come from the
// configuration alone: these files are removed before every start (else a
// restart would keep a removed user, or an old password) and after every
// stop (they hold password hashes, PLAIN passwords in clear).
var authStateFiles = []string{"sasl.json", "acls.json"}

// embeddedSpec says how the embedded broker runs. It holds passwords and
// shows (fmt, and JSON logs) as its address only.
type embeddedSpec struct {
	// addr is where the broker listens, and what it tells clients to
	// connect to.
	addr string
	// tls secures the listener; nil: plaintext.
	tls *brokerTLS
	// mechanism and users are the agents' SASL users (named after their
	// nodes) and passwords. The master's user, which holds MasterACLs,
	// is client.SASL.
	mechanism string
	users     map[string]string
	// acls turns on authorization: each agent user gets NodeACLs of its
	// node, the master MasterACLs of the prefix, and nothing else is
	// allowed.
	acls bool
	// prefix is the topic prefix the ACLs name.
	prefix string
	// client is how the master connects: startEmbedded installs the ACLs
	// with it.
	client kafkatransport.Config
}

// String implements fmt.Stringer: the address, nothing secret.
func (s embeddedSpec) String() string { return s.addr }

// MarshalText implements encoding.TextMarshaler, which JSON logging uses:
// the address, nothing secret.
func (s embeddedSpec) MarshalText() ([]byte, error) { return []byte(s.addr), nil }

// GoString implements fmt.GoStringer (%#v): the address, nothing secret.
func (s embeddedSpec) GoString() string { return "embeddedSpec(" + s.addr + ")" }

// equal reports whether a broker started as s runs as o says.
func (s embeddedSpec) equal(o embeddedSpec) bool {
	if s.addr != o.addr || (s.tls == nil) != (o.tls == nil) || s.mechanism != o.mechanism ||
		!maps.Equal(s.users, o.users) || s.acls != o.acls || s.prefix != o.prefix {
		return false
	}
	return s.tls == nil || s.tls.sum == o.tls.sum
}

// nodeACLs returns the ACLs of every agent user: NodeACLs of the node it
// is named after.
func (s embeddedSpec) nodeACLs() []ACL {
	var acls []ACL
	for _, u := range slices.Sorted(maps.Keys(s.users)) {
		acls = append(acls, NodeACLs(s.prefix, u, u)...)
	}
	return acls
}

// embeddedBroker is the in-process single broker the plugin runs when no
// brokers are configured.
type embeddedBroker struct {
	cluster *kfake.Cluster
	addr    string
	dir     string
	spec    embeddedSpec
	sasl    *kafkatransport.SASL
	// admin is how the plugin reaches the broker as its own superuser
	// (embeddedAdminUser), with SASL only: the master's client settings
	// with the administrator's user.
	admin kafkatransport.Config
	// guard checks PLAIN logins; nil when no user logs in with PLAIN.
	guard *plainGuard
}

// startEmbedded starts a broker as spec says, keeping its state in
// dataDir/broker, so topics, records and committed offsets survive a
// restart of the plugin. sasl is the master's user: with it, the broker
// requires SASL; the master may do what MasterACLs allows, spec's users
// (the agents') what NodeACLs allows (everything without spec.acls). The
// broker's own administrator (embeddedAdminUser, a random password drawn
// here) installs the ACLs; PLAIN logins pass plainGuard first.
func startEmbedded(ctx context.Context, dataDir string, spec embeddedSpec, sasl *kafkatransport.SASL, logger hclog.Logger) (*embeddedBroker, error) {
	dir := filepath.Join(dataDir, "broker")
	addr := spec.addr
	_, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker port %q: %w", portStr, err)
	}
	// The directory holds every node's traffic: the master's only.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded broker data directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded broker data directory: %w", err)
	}
	if err := removeAuthState(dir); err != nil {
		return nil, err
	}
	// The broker accepts no connection before the guard checks PLAIN
	// logins (kfake listens as soon as NewCluster returns; the guard is
	// installed after): a connection made in between waits in the
	// kernel's backlog, then meets the guard.
	gate := make(chan struct{})
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			ln, err := net.Listen(network, addr)
			if err != nil {
				return nil, err
			}
			return newGatedListener(advertisingListener{ln, addr}, gate), nil
		}),
		kfake.DataDir(dir),
		kfake.ClusterID("conveyor-embedded"),
		kfake.DefaultNumPartitions(1),
		kfake.WithLogger(kfakeLogger{logger}),
	}
	if spec.tls != nil {
		opts = append(opts, kfake.TLS(spec.tls.config.Clone()))
	}
	var admin *kafkatransport.SASL
	var guard *plainGuard
	if sasl != nil {
		if admin, err = newAdminSASL(); err != nil {
			return nil, err
		}
		// The master is no superuser: on its prefix's topics and groups it
		// may do what MasterACLs says, and nothing else. The broker's own
		// administrator, whose password never leaves this process,
		// installs and removes the agents' ACLs.
		var masterACLs []kfake.ACL
		if spec.acls {
			for _, a := range MasterACLs(spec.prefix, sasl.Username) {
				k, err := a.Kfake()
				if err != nil {
					return nil, fmt.Errorf("embedded broker: %w", err)
				}
				masterACLs = append(masterACLs, k)
			}
		}
		opts = append(opts, kfake.EnableSASL(),
			kfake.Superuser(admin.Mechanism, admin.Username, admin.Password),
			kfake.User(sasl.Mechanism, sasl.Username, sasl.Password, masterACLs...))
		if spec.acls {
			opts = append(opts, kfake.EnableACLs())
		}
		plain := map[string]string{}
		if sasl.Mechanism == kafkatransport.MechanismPlain {
			plain[sasl.Username] = sasl.Password
		}
		if spec.mechanism == kafkatransport.MechanismPlain {
			maps.Copy(plain, spec.users)
		}
		if len(plain) > 0 {
			guard = newPlainGuard(plain)
		}
		for _, u := range slices.Sorted(maps.Keys(spec.users)) {
			var acls []kfake.ACL
			if spec.acls {
				for _, a := range NodeACLs(spec.prefix, u, u) {
					k, err := a.Kfake()
					if err != nil {
						return nil, fmt.Errorf("embedded broker: %w", err)
					}
					acls = append(acls, k)
				}
			}
			opts = append(opts, kfake.User(spec.mechanism, u, spec.users[u], acls...))
		}
	}
	deadline := time.Now().Add(bindRetry)
	var c *kfake.Cluster
	for {
		c, err = kfake.NewCluster(opts...)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return nil, fmt.Errorf("start embedded kafka broker on %s (data in %s): %w", addr, dir, err)
		}
		logger.Debug("embedded broker address in use, retrying", "addr", addr)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("start embedded kafka broker on %s: %w", addr, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if guard != nil {
		guard.install(c)
	}
	if testHookBeforeAccept != nil {
		testHookBeforeAccept(addr)
	}
	close(gate)
	b := &embeddedBroker{cluster: c, addr: addr, dir: dir, spec: spec, sasl: sasl, guard: guard}
	if admin != nil {
		b.admin = spec.client
		b.admin.SASL = admin
		b.admin.ClientID = "conveyor-embedded-admin"
	}
	if sasl != nil && spec.acls {
		// kfake seeds a user's ACLs only into a new data directory; one it
		// reloads starts without (removeAuthState): install them as the
		// broker's administrator, and the master's own too. Creating an
		// existing ACL is no error.
		acls := append(MasterACLs(spec.prefix, sasl.Username), spec.nodeACLs()...)
		if err := ApplyACLs(ctx, b.admin, acls); err != nil {
			b.close()
			return nil, fmt.Errorf("embedded kafka broker on %s: install the ACLs: %w", addr, err)
		}
	}
	logSecurity(logger, spec, sasl)
	return b, nil
}

// logSecurity says how the broker is protected, and warns about what is
// not.
func logSecurity(logger hclog.Logger, spec embeddedSpec, sasl *kafkatransport.SASL) {
	switch {
	case spec.tls == nil && sasl == nil:
		logger.Warn("embedded Kafka broker without TLS/SASL: loopback demo only; anyone on this host can read and write every node's topics", "addr", spec.addr)
		return
	case spec.tls == nil:
		logger.Warn("embedded Kafka broker without TLS: loopback only; frames cross it unencrypted", "addr", spec.addr)
	case sasl == nil && spec.tls.clientCAs == nil:
		logger.Warn("embedded Kafka broker without SASL or client certificates: any client that reaches it may read and write every node's topics", "addr", spec.addr)
	}
	if len(spec.users) > 0 && !spec.acls {
		logger.Warn("embedded Kafka broker without ACLs (embedded { acls = false }): every agent may read and write every node's topics", "addr", spec.addr)
	}
	logger.Info("embedded Kafka broker security", "addr", spec.addr, "tls", spec.tls != nil,
		"client_certificates", spec.tls != nil && spec.tls.clientCAs != nil,
		"sasl", sasl != nil, "agent_users", len(spec.users), "acls", spec.acls)
}

// removeAuthState removes kfake's persisted users and ACLs from dir.
func removeAuthState(dir string) error {
	for _, f := range authStateFiles {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("embedded broker: %w", err)
		}
	}
	return nil
}

// same reports whether the broker runs as asked.
func (b *embeddedBroker) same(dataDir string, spec embeddedSpec, sasl *kafkatransport.SASL) bool {
	if b.dir != filepath.Join(dataDir, "broker") || !b.spec.equal(spec) || (b.sasl == nil) != (sasl == nil) {
		return false
	}
	return b.sasl == nil || *b.sasl == *sasl
}

// close stops the broker, flushing its state to disk, and removes the
// users and ACLs it saved.
func (b *embeddedBroker) close() {
	b.cluster.Close()
	_ = removeAuthState(b.dir)
}

// advertisingListener is the broker's listener. kfake tells clients to
// connect to its listener's address: that is addr as configured (a host
// name stays a name, which the broker's certificate names), not the
// address it resolved to.
type advertisingListener struct {
	net.Listener
	addr string
}

// Addr implements net.Listener.
func (l advertisingListener) Addr() net.Addr { return advertisedAddr(l.addr) }

// testHookBeforeAccept, when set (by tests only), runs in startEmbedded
// after kfake listens and before the broker accepts connections.
var testHookBeforeAccept func(addr string)

// gatedListener accepts no connection before its gate is closed: the
// embedded broker opens it once the PLAIN guard is installed, so no login
// reaches kfake unchecked. Connections made before wait in the kernel's
// backlog. Close unblocks a waiting Accept.
type gatedListener struct {
	net.Listener
	gate   <-chan struct{}
	closed chan struct{}
	once   sync.Once
}

// newGatedListener returns ln accepting only once gate is closed.
func newGatedListener(ln net.Listener, gate <-chan struct{}) *gatedListener {
	return &gatedListener{Listener: ln, gate: gate, closed: make(chan struct{})}
}

// Accept implements net.Listener: it waits for the gate, then accepts.
func (l *gatedListener) Accept() (net.Conn, error) {
	select {
	case <-l.gate:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	return l.Listener.Accept()
}

// Close implements net.Listener.
func (l *gatedListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// advertisedAddr is a TCP address as configured.
type advertisedAddr string

// Network implements net.Addr.
func (advertisedAddr) Network() string { return "tcp" }

// String implements net.Addr.
func (a advertisedAddr) String() string { return string(a) }

// kfakeLogger forwards the broker's warnings and errors to hclog.
type kfakeLogger struct{ log hclog.Logger }

// Logf implements kfake.Logger.
func (l kfakeLogger) Logf(level kfake.LogLevel, msg string, args ...any) {
	switch level {
	case kfake.LogLevelError:
		l.log.Error(fmt.Sprintf(msg, args...))
	case kfake.LogLevelWarn:
		l.log.Warn(fmt.Sprintf(msg, args...))
	}
}

// errResourceNotFound is Kafka's RESOURCE_NOT_FOUND (91), which sarama
// does not name: deleting SCRAM credentials that do not exist.
const errResourceNotFound = sarama.KError(91)

// forgetUser removes the agent user user from the running broker: its
// ACLs, its SCRAM credentials (kfake deletes those), its PLAIN logins (the
// guard stops them; kfake cannot delete a PLAIN user). It returns what it
// removed, in words. The next start creates users for the configured
// nodes only (nodelessUsers), so a removed node's user stays gone. The
// master's and the administrator's users are never touched.
func (b *embeddedBroker) forgetUser(ctx context.Context, user string) ([]string, error) {
	if b.sasl == nil || user == b.sasl.Username || user == embeddedAdminUser {
		return nil, nil
	}
	var removed []string
	if b.guard != nil && b.guard.revoke(user) {
		removed = append(removed, "its PLAIN login")
	}
	err := kafkatransport.WithAdmin(ctx, b.admin, func(admin sarama.ClusterAdmin) error {
		if b.spec.acls {
			p := Principal(user)
			matched, err := admin.DeleteACL(sarama.AclFilter{
				ResourceType: sarama.AclResourceAny, ResourcePatternTypeFilter: sarama.AclPatternAny,
				Principal: &p, Operation: sarama.AclOperationAny, PermissionType: sarama.AclPermissionAny,
			}, false)
			if err != nil {
				return fmt.Errorf("delete the ACLs of %s: %w", p, err)
			}
			if len(matched) > 0 {
				removed = append(removed, fmt.Sprintf("its %d ACLs", len(matched)))
			}
		}
		for _, m := range []sarama.ScramMechanismType{sarama.SCRAM_MECHANISM_SHA_256, sarama.SCRAM_MECHANISM_SHA_512} {
			res, err := admin.DeleteUserScramCredentials([]sarama.AlterUserScramCredentialsDelete{{Name: user, Mechanism: m}})
			if err != nil {
				return fmt.Errorf("delete the %s credentials of %s: %w", m, user, err)
			}
			for _, r := range res {
				switch r.ErrorCode {
				case sarama.ErrNoError:
					removed = append(removed, "its "+m.String()+" credentials")
				case errResourceNotFound: // no such credentials: nothing to delete
				default:
					return fmt.Errorf("delete the %s credentials of %s: %w", m, user, r.ErrorCode)
				}
			}
		}
		return nil
	})
	return removed, err
}
