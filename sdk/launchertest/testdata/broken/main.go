// Command broken is a deliberately non-conformant launcher plugin: it
// accepts any configuration, its agent answers pings with the wrong nonce
// and it declares the commands capability without having commands. The conformance kit's own tests expect it to fail.
package main

import (
	"context"
	"io"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/sdk/hclspec"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

func main() {
	launcher.Serve(func(hclog.Logger) launcher.Launcher { return broken{} })
}

type broken struct{}

func (broken) Info(context.Context) (*launcher.Info, error) {
	return &launcher.Info{Name: "broken", Version: "0.0.1", Capabilities: []string{launcher.CapCommands}}, nil
}

func (broken) Schema(context.Context) (*launcher.Schema, error) {
	return &launcher.Schema{Node: hclspec.NewObject(map[string]*hclspec.Spec{
		"command": hclspec.NewAttr("command", "list(string)", false),
	})}, nil
}

func (broken) Configure(context.Context, *launcher.Config) error { return nil }

func (broken) Launch(context.Context, *launcher.Node) (launcher.Conn, error) {
	return &offByOne{out: make(chan []byte, 64), done: make(chan struct{})}, nil
}

func (broken) Teardown(context.Context, string) error { return nil }

// offByOne answers a ping with a pong whose nonce is one too high.
type offByOne struct {
	out  chan []byte
	done chan struct{}
	once sync.Once
}

func (c *offByOne) Send(frame []byte) error {
	_, msg, err := wire.Unmarshal(frame)
	if err != nil {
		return err
	}
	if p, ok := msg.(*wire.Ping); ok {
		c.out <- wire.Marshal(&wire.Pong{Nonce: p.Nonce + 1})
	}
	return nil
}

func (c *offByOne) Recv() ([]byte, error) {
	select {
	case b := <-c.out:
		return b, nil
	case <-c.done:
		return nil, io.EOF
	}
}

func (c *offByOne) Close() error {
	c.once.Do(func() { close(c.done) })
	return nil
}
