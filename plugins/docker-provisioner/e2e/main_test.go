// Package e2e runs the Docker provisioner plugin, built as the host runs
// it, against a real Docker engine (dockertest) and, for the agent's
// connection, against the Kafka launcher's embedded broker on loopback.
package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zclconf/go-cty/cty"

	"github.com/conveyor-ci/conveyor/plugins/docker-provisioner/dockertest"
	"github.com/conveyor-ci/conveyor/sdk/hclspec"
	"github.com/conveyor-ci/conveyor/sdk/provisioner"
)

// Binaries built by TestMain.
var (
	pluginBin string
	kafkaBin  string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "docker-provisioner-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pluginBin = filepath.Join(dir, "conveyor-provisioner-docker")
	kafkaBin = filepath.Join(dir, "conveyor-launcher-kafka")
	for out, pkg := range map[string]string{
		pluginBin: "github.com/conveyor-ci/conveyor/plugins/docker-provisioner/cmd/conveyor-provisioner-docker",
		kafkaBin:  "github.com/conveyor-ci/conveyor/plugins/kafka-launcher/cmd/conveyor-launcher-kafka",
	} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build", pkg+":", err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testTimeout bounds every wait.
const testTimeout = 2 * time.Minute

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

// decode parses an HCL body against a plugin's spec, as the host does.
func decode(t *testing.T, src string, spec *hclspec.Spec) cty.Value {
	t.Helper()
	s, err := hclspec.Convert(spec)
	if err != nil {
		t.Fatal(err)
	}
	v, err := hclspec.DecodeSource("test.hcl", src, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// startPlugin starts the provisioner plugin and configures it with one
// pool named pool, against engine.
func startPlugin(t *testing.T, eng *dockertest.Engine, master, pool, poolHCL string) *provisioner.Process {
	t.Helper()
	ctx := ctxT(t)
	p, err := provisioner.Start(ctx, provisioner.ClientOptions{Path: pluginBin, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	sch, err := p.Provisioner.Schema(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &provisioner.Config{
		Host:   provisioner.Host{ServerName: "e2e", DataDir: t.TempDir(), Version: "test", MasterID: master},
		Global: decode(t, fmt.Sprintf("host = %q", eng.Host), sch.Global),
		Pools:  []*provisioner.Pool{{Name: pool, Config: decode(t, poolHCL, sch.Pool)}},
	}
	if err := p.Provisioner.Configure(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	return p
}
