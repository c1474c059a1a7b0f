// Command oldplugin is a test launcher plugin built the way a plugin of an
// older SDK would behave: it serves protocol version 1 only, which carries
// the Launcher service but not the SecretManager one. It still claims the
// "secrets" capability and implements SecretManager, so a host that
// dispensed a secret manager from a version 1 plugin would be caught.
//
// The environment variable OLDPLUGIN_PROTOCOLS ("1,2") overrides the
// versions it serves, so tests can show the same binary gets a secret
// manager once version 2 is negotiated.
//
// Its agents live in the plugin process: each launched node answers every
// wire Ping with a Pong. Launch refuses to run before Configure, so a host
// that forgets to configure a restarted plugin is caught too.
package main

import (
	"context"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

func main() {
	versions := []int{launcher.ProtocolV1}
	if s := os.Getenv("OLDPLUGIN_PROTOCOLS"); s != "" {
		versions = nil
		for _, f := range strings.Split(s, ",") {
			v, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				os.Exit(2)
			}
			versions = append(versions, v)
		}
	}
	launcher.Serve(func(hclog.Logger) launcher.Launcher { return &old{} },
		launcher.WithProtocolVersions(versions...))
}

type old struct {
	mu         sync.Mutex
	configured bool
}

func (*old) Info(context.Context) (*launcher.Info, error) {
	return &launcher.Info{Name: "old", Version: "0.0.1", Capabilities: []string{launcher.CapSecrets}}, nil
}

// Schema declares no configuration: both blocks must be empty.
func (*old) Schema(context.Context) (*launcher.Schema, error) {
	return &launcher.Schema{}, nil
}

func (o *old) Configure(context.Context, *launcher.Config) error {
	o.mu.Lock()
	o.configured = true
	o.mu.Unlock()
	return nil
}

func (o *old) Launch(context.Context, *launcher.Node) (launcher.Conn, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.configured {
		return nil, errors.New("launch before configure")
	}
	return &pongConn{out: make(chan []byte, 128), done: make(chan struct{})}, nil
}

func (*old) Teardown(context.Context, string) error { return nil }

func (*old) NodeSecret(_ context.Context, node string) (*launcher.NodeSecret, error) {
	return &launcher.NodeSecret{Secret: []byte("secret-of-" + node), AgentCommand: []string{"agent", node}}, nil
}

// pongConn is an in-process agent answering pings.
type pongConn struct {
	out  chan []byte
	done chan struct{}
	once sync.Once
}

func (c *pongConn) Send(frame []byte) error {
	_, msg, err := wire.Unmarshal(frame)
	if err != nil {
		return err
	}
	ping, ok := msg.(*wire.Ping)
	if !ok {
		return nil
	}
	select {
	case c.out <- wire.Marshal(&wire.Pong{Nonce: ping.Nonce, UnixNano: ping.UnixNano}):
		return nil
	case <-c.done:
		return io.ErrClosedPipe
	}
}

func (c *pongConn) Recv() ([]byte, error) {
	select {
	case f := <-c.out:
		return f, nil
	case <-c.done:
		return nil, io.EOF
	}
}

func (c *pongConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return nil
}
