// Command commander is a test launcher plugin with operator commands (the
// commands capability). Its "agent" lives inside the plugin and answers
// every Ping with a Pong, so it passes the conformance kit; its commands
// show what reached them:
//
//	nodes  one line per configured node: its name and greeting
//	echo   the arguments, one per line
//	mode   whether Configure ran in validate-only mode
//	fail   a line of output, then an error
//
// A node whose greeting is "refuse" fails to launch, "refuse-permanent"
// fails with a launcher.Permanent error.
package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/sdk/hclspec"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

func main() {
	launcher.Serve(func(hclog.Logger) launcher.Launcher { return &commander{conns: map[string]*pongConn{}} })
}

type commander struct {
	mu           sync.Mutex
	validateOnly bool
	conns        map[string]*pongConn
}

// nodeConfig is a node's `commander {}` block.
type nodeConfig struct {
	Greeting string `json:"greeting"`
}

func (c *commander) Info(context.Context) (*launcher.Info, error) {
	// The commands capability is not listed: Serve adds it because
	// commander implements launcher.Commander.
	return &launcher.Info{Name: "commander", Version: "0.0.1"}, nil
}

func (c *commander) Schema(context.Context) (*launcher.Schema, error) {
	return &launcher.Schema{Node: hclspec.NewObject(map[string]*hclspec.Spec{
		"greeting": hclspec.NewAttr("greeting", "string", false),
	})}, nil
}

func (c *commander) Configure(_ context.Context, cfg *launcher.Config) error {
	for _, n := range cfg.Nodes {
		var nc nodeConfig
		if err := n.Decode(&nc); err != nil {
			return launcher.ConfigErrors{{Node: n.Name, Message: err.Error()}}
		}
	}
	c.mu.Lock()
	c.validateOnly = cfg.Host.ValidateOnly
	c.mu.Unlock()
	return nil
}

func (c *commander) Launch(_ context.Context, node *launcher.Node) (launcher.Conn, error) {
	// Greetings "refuse" and "refuse-permanent" fail the launch, the
	// second with a Permanent error; "approve" waits for the approval of
	// the fingerprint "SHA256:test" (ApprovalPending) until the host
	// passes it among the node's approved keys.
	var nc nodeConfig
	_ = node.Decode(&nc)
	switch nc.Greeting {
	case "refuse":
		return nil, fmt.Errorf("refused as asked")
	case "refuse-permanent":
		return nil, launcher.Permanent(fmt.Errorf("refused for good as asked"))
	case "approve":
		if !slices.Contains(node.ApprovedKeys, "SHA256:test") {
			return nil, launcher.ApprovalPending("SHA256:test", fmt.Errorf("host key SHA256:test waits for approval"))
		}
	}
	_ = c.Teardown(context.Background(), node.Name)
	conn := &pongConn{out: make(chan []byte, 64), done: make(chan struct{})}
	c.mu.Lock()
	c.conns[node.Name] = conn
	c.mu.Unlock()
	return conn, nil
}

func (c *commander) Teardown(_ context.Context, node string) error {
	c.mu.Lock()
	conn := c.conns[node]
	delete(c.conns, node)
	c.mu.Unlock()
	if conn != nil {
		_ = conn.Close()
	}
	return nil
}

func (c *commander) Commands(context.Context) ([]launcher.Command, error) {
	return []launcher.Command{
		{Name: "nodes", Help: "list the configured nodes and their greetings"},
		{Name: "echo", Help: "print the arguments, one per line"},
		{Name: "mode", Help: "say how the plugin was configured"},
		{Name: "fail", Help: "print a line, then fail"},
	}, nil
}

func (c *commander) RunCommand(_ context.Context, req *launcher.CommandRequest) (string, error) {
	var b strings.Builder
	switch req.Name {
	case "nodes":
		for _, n := range req.Nodes {
			var nc nodeConfig
			if err := n.Decode(&nc); err != nil {
				return b.String(), fmt.Errorf("node %s: %w", n.Name, err)
			}
			fmt.Fprintf(&b, "%s: %s\n", n.Name, nc.Greeting)
		}
	case "echo":
		for _, a := range req.Args {
			fmt.Fprintln(&b, a)
		}
	case "mode":
		c.mu.Lock()
		fmt.Fprintf(&b, "validate_only=%v\n", c.validateOnly)
		c.mu.Unlock()
	case "fail":
		return "half done\n", fmt.Errorf("fail: failed as asked (args %q)", req.Args)
	default:
		return "", fmt.Errorf("unknown command %q (commands: nodes, echo, mode, fail)", req.Name)
	}
	return b.String(), nil
}

// pongConn is an agent inside the plugin: it answers each Ping with a Pong.
type pongConn struct {
	out  chan []byte
	done chan struct{}
	once sync.Once
}

func (p *pongConn) Send(frame []byte) error {
	_, msg, err := wire.Unmarshal(frame)
	if err != nil {
		return err
	}
	if ping, ok := msg.(*wire.Ping); ok {
		select {
		case p.out <- wire.Marshal(&wire.Pong{Nonce: ping.Nonce, UnixNano: ping.UnixNano}):
		case <-p.done:
			return io.ErrClosedPipe
		}
	}
	return nil
}

func (p *pongConn) Recv() ([]byte, error) {
	select {
	case b := <-p.out:
		return b, nil
	case <-p.done:
		return nil, io.EOF
	}
}

func (p *pongConn) Close() error {
	p.once.Do(func() { close(p.done) })
	return nil
}
