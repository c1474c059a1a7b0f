package kafkalauncher

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/zclconf/go-cty/cty"

	"github.com/conveyor-ci/conveyor/sdk/hclspec"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/wire"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// pluginBin is the plugin binary built by TestMain.
var pluginBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kafka-launcher-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pluginBin = filepath.Join(dir, "conveyor-launcher-kafka")
	cmd := exec.Command("go", "build", "-o", pluginBin, "../cmd/conveyor-launcher-kafka")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build plugin:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testTimeout bounds every wait.
const testTimeout = 60 * time.Second

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func testLogger(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "test", Level: hclog.Info, Output: testWriter{t}})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// decode parses an HCL body against spec, as the host does.
func decode(t *testing.T, src string, spec *hclspec.Spec) cty.Value {
	t.Helper()
	s, err := hclspec.Convert(spec)
	if err != nil {
		t.Fatal(err)
	}
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "test.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	v, diags := hcldec.Decode(f.Body, s, nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return v
}

// config builds a launcher configuration from HCL.
func config(t *testing.T, dataDir, global string, nodes ...string) *launcher.Config {
	t.Helper()
	cfg := &launcher.Config{
		Host:   launcher.Host{ServerName: "test", DataDir: dataDir, Version: "test"},
		Global: decode(t, global, globalSpec()),
	}
	for _, n := range nodes {
		cfg.Nodes = append(cfg.Nodes, &launcher.Node{Name: n, Config: decode(t, "", nodeSpec())})
	}
	return cfg
}

// pongAgent is a test agent: it connects to the node's topics as soon as
// they exist and answers every Ping with a Pong.
type pongAgent struct {
	t      *testing.T
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	conn   *kafkatransport.Conn
}

func startPongAgent(t *testing.T, cfg kafkatransport.Config, node string) *pongAgent {
	ctx, cancel := context.WithCancel(context.Background())
	a := &pongAgent{t: t, cancel: cancel, done: make(chan struct{})}
	go a.run(ctx, cfg, node)
	t.Cleanup(a.stop)
	return a
}

func (a *pongAgent) run(ctx context.Context, cfg kafkatransport.Config, node string) {
	defer close(a.done)
	var conn *kafkatransport.Conn
	for {
		// The topics appear when the plugin is configured: retry until then.
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := kafkatransport.DialAgent(dctx, cfg, node, hclog.NewNullLogger())
		cancel()
		if err == nil {
			conn = c
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	a.mu.Lock()
	a.conn = conn
	a.mu.Unlock()
	if ctx.Err() != nil {
		_ = conn.Close()
		return
	}
	for {
		raw, err := conn.Recv()
		if err != nil {
			return
		}
		_, msg, err := wire.Unmarshal(raw)
		if err != nil {
			continue
		}
		if ping, ok := msg.(*wire.Ping); ok {
			if err := conn.Send(wire.Marshal(&wire.Pong{Nonce: ping.Nonce, UnixNano: ping.UnixNano})); err != nil && !errors.Is(err, kafkatransport.ErrClosed) {
				a.t.Logf("pong agent: %v", err)
			}
		}
	}
}

func (a *pongAgent) stop() {
	a.cancel()
	a.mu.Lock()
	c := a.conn
	a.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
	<-a.done
	a.mu.Lock()
	c = a.conn
	a.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}
