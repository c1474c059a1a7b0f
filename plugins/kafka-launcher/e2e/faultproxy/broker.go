package faultproxy

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// rebindTimeout bounds how long Start waits for the broker's previous port
// to become free again before it takes a new one.
const rebindTimeout = 5 * time.Second

// Broker is an in-process single-broker kfake cluster behind a Proxy. The
// broker listens on a loopback port of its own but advertises the proxy's
// address in its metadata (and find-coordinator) responses, so a client
// bootstrapped through the proxy keeps talking through it. Its methods are
// safe for concurrent use, but Start and Restart must be called from the
// test's goroutine.
type Broker struct {
	proxy   *Proxy
	dataDir string
	opts    []kfake.Opt

	mu      sync.Mutex
	cluster *kfake.Cluster // nil while stopped
	port    int            // the port the broker really listens on
}

// StartBroker starts a broker and its proxy, and registers their shutdown
// with t.Cleanup. With a non-empty dataDir the broker keeps its state there
// (kfake.DataDir), so that it survives Stop and Start; with an empty one the
// state lives in memory and a restarted broker starts empty. opts are passed
// to kfake.NewCluster; the broker count, ports and listener are ours and
// override any given (so kfake's AddNode fails: there is one proxy, for one
// broker).
func StartBroker(t testing.TB, dataDir string, opts ...kfake.Opt) *Broker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("faultproxy: listen for the broker: %v", err)
	}
	p, err := New(ln.Addr().String())
	if err != nil {
		_ = ln.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	b := &Broker{proxy: p, dataDir: dataDir, opts: opts}
	t.Cleanup(b.Stop)
	if err := b.startOn(ln); err != nil {
		t.Fatal(err)
	}
	return b
}

// Addr returns the proxy's host:port, the bootstrap address clients use.
func (b *Broker) Addr() string { return b.proxy.Addr() }

// Proxy returns the proxy between the clients and the broker.
func (b *Broker) Proxy() *Proxy { return b.proxy }

// Cluster returns the running kfake cluster, to use its control functions,
// or nil while the broker is stopped. Restart replaces it.
func (b *Broker) Cluster() *kfake.Cluster {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cluster
}

// Stop stops the broker, flushing its state to the data directory if it
// has one. kfake closes every connection, so the proxy closes the clients'
// connections too; until Start, a new connection is closed right after its
// first request, when the proxy fails to reach the broker. Stopping a
// stopped broker does nothing.
func (b *Broker) Stop() {
	b.mu.Lock()
	c := b.cluster
	b.cluster = nil
	b.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// Start starts a stopped broker again, on the port it listened on before
// (waiting a little for the port to be free), reloading its state from the
// data directory. Clients reconnect through the proxy, whose address does
// not change; if the old port stays taken, the broker takes a new one and
// the proxy forwards there. It fails t if the broker is running.
func (b *Broker) Start(t testing.TB) {
	t.Helper()
	b.mu.Lock()
	running, port := b.cluster != nil, b.port
	b.mu.Unlock()
	if running {
		t.Fatal("faultproxy: start the broker: already running")
	}
	ln, err := listenAgain(port)
	if err != nil {
		t.Logf("faultproxy: broker port %d still taken (%v), moving to a new one", port, err)
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatalf("faultproxy: listen for the broker: %v", err)
		}
	}
	b.proxy.SetTarget(ln.Addr().String())
	if err := b.startOn(ln); err != nil {
		t.Fatal(err)
	}
}

// Restart stops the broker and starts it again, as Stop and Start do.
func (b *Broker) Restart(t testing.TB) {
	t.Helper()
	b.Stop()
	b.Start(t)
}

// startOn starts the cluster with ln as its listener, advertised as the
// proxy's address.
func (b *Broker) startOn(ln net.Listener) error {
	var once sync.Once
	listen := func(string, string) (net.Listener, error) {
		err := errors.New("faultproxy: kfake asked for a second listener")
		once.Do(func() { err = nil })
		if err != nil {
			return nil, err
		}
		return advertisedListener{Listener: ln, addr: b.proxy.ln.Addr()}, nil
	}
	opts := append(append([]kfake.Opt{}, b.opts...), kfake.NumBrokers(1), kfake.Ports(0), kfake.ListenFn(listen))
	if b.dataDir != "" {
		opts = append(opts, kfake.DataDir(b.dataDir))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		_ = ln.Close()
		return fmt.Errorf("faultproxy: start kfake (data dir %q): %w", b.dataDir, err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	b.mu.Lock()
	b.cluster, b.port = c, port
	b.mu.Unlock()
	return nil
}

// listenAgain listens on the loopback port again, retrying while it is in
// use for up to rebindTimeout.
func listenAgain(port int) (net.Listener, error) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(rebindTimeout)
	for {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			return ln, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// advertisedListener is the broker's listener, reporting the proxy's address
// as its own: kfake advertises its listener's Addr in metadata.
type advertisedListener struct {
	net.Listener
	addr net.Addr
}

// Addr returns the proxy's address.
func (l advertisedListener) Addr() net.Addr { return l.addr }
