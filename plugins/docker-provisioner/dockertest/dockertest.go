// Package dockertest starts a real Docker engine for tests, the way
// sshdtest starts a real sshd: Debian's docker.io dockerd, as root, with
// its data, its state and its socket in a private temporary directory,
// no bridge network and no iptables rules, so that it touches nothing of
// the machine's. Nothing is pulled (no registry is needed): AgentImage
// builds the agent's image from the static conveyor-agent binary with the
// engine's import API.
//
// Without dockerd the test fails under `make test` and skips under a
// plain `go test` (sdk/testenv); not being root is a skip.
package dockertest

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/conveyor-ci/conveyor/sdk/testenv"
)

// Dockerd is where Debian's docker.io puts the engine.
const Dockerd = "/usr/sbin/dockerd"

// AgentPath is where AgentImage puts conveyor-agent in the image (on the
// containers' default PATH).
const AgentPath = "/usr/local/bin/conveyor-agent"

// startTimeout bounds the engine's start on a busy machine.
const startTimeout = 90 * time.Second

// Engine is a running dockerd.
type Engine struct {
	// Host is the engine's address, for DOCKER_HOST or the provisioner's
	// host attribute.
	Host string
	// Client talks to the engine.
	Client *client.Client

	dir     string
	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string
}

// Start starts a Docker engine, stopped when the test ends.
func Start(t testing.TB) *Engine {
	t.Helper()
	e, err := start(t)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	return e
}

// start is Start without the cleanup, for engines shared by a package's
// tests (StartShared).
func start(t testing.TB) (*Engine, error) {
	t.Helper()
	bin := testenv.Command(t, Dockerd, "docker.io")
	if os.Geteuid() != 0 {
		t.Skip("dockerd needs root: run the test as root")
	}
	// A short directory: the engine's sockets (its own and containerd's,
	// under exec/) must stay under the 108 bytes of a unix socket path.
	dir, err := os.MkdirTemp("/tmp", "dk")
	if err != nil {
		return nil, err
	}
	e := &Engine{dir: dir, Host: "unix://" + filepath.Join(dir, "d.sock"), exited: make(chan struct{}), logPath: filepath.Join(dir, "log")}
	log, err := os.Create(e.logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	e.cmd = exec.Command(bin,
		"--data-root", filepath.Join(dir, "root"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"),
		"-H", e.Host,
		"--storage-driver", "vfs",
		"--iptables=false", "--ip-masq=false", "--bridge=none",
		"--shutdown-timeout", "5",
	)
	e.cmd.Stdout, e.cmd.Stderr = log, log
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := e.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start dockerd: %w", err)
	}
	go func() {
		_ = e.cmd.Wait()
		close(e.exited)
	}()
	if e.Client, err = client.New(client.WithHost(e.Host)); err != nil {
		e.Stop()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := e.Client.Ping(pctx, client.PingOptions{})
		pcancel()
		if err == nil {
			return e, nil
		}
		select {
		case <-e.exited:
			out := e.Log()
			e.Stop()
			return nil, fmt.Errorf("dockerd exited at start:\n%s", out)
		case <-ctx.Done():
			out := e.Log()
			e.Stop()
			return nil, fmt.Errorf("dockerd did not answer within %v (%v):\n%s", startTimeout, err, out)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Log is the tail of the engine's log.
func (e *Engine) Log() string {
	b, _ := os.ReadFile(e.logPath)
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

// Stop removes every container, stops the engine and deletes its directory.
func (e *Engine) Stop() {
	if e.Client != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if r, err := e.Client.ContainerList(ctx, client.ContainerListOptions{All: true}); err == nil {
			for _, c := range r.Items {
				_, _ = e.Client.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
			}
		}
		cancel()
		_ = e.Client.Close()
	}
	if e.cmd != nil && e.cmd.Process != nil {
		_ = e.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.exited:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
			<-e.exited
		}
	}
	unmountUnder(e.dir)
	_ = os.RemoveAll(e.dir)
}

// unmountUnder detaches what the engine left mounted below dir (its
// default network namespace stays bind-mounted under exec/netns after it
// exits), deepest first, so that the directory can go.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			points = append(points, f[4])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		_ = syscall.Unmount(points[i], syscall.MNT_DETACH)
	}
}

// AgentImage builds the static conveyor-agent (CGO_ENABLED=0, from this
// repository's workspace) and imports it into the engine as the image
// ref, its only file AgentPath (plus the empty directories an agent
// writes to). It returns ref.
func (e *Engine) AgentImage(t testing.TB, ref string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "conveyor-agent")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/conveyor-ci/conveyor/agent/cmd/conveyor-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build conveyor-agent: %v\n%s", err, out)
	}
	agent, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"usr/", "usr/local/", "usr/local/bin/", "tmp/", "run/", "var/", "var/lib/", "var/lib/conveyor-agent/", "etc/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: mode}); err != nil {
			t.Fatal(err)
		}
	}
	files := []struct {
		name string
		mode int64
		body []byte
	}{
		{strings.TrimPrefix(AgentPath, "/"), 0o755, agent},
		{"etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n")},
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.body))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := e.Client.ImageImport(ctx, client.ImageImportSource{Source: &buf, SourceName: "-"}, ref, client.ImageImportOptions{})
	if err != nil {
		t.Fatalf("import image %s: %v", ref, err)
	}
	defer r.Close()
	out, err := io.ReadAll(r)
	if err != nil || bytes.Contains(out, []byte(`"error"`)) {
		t.Fatalf("import image %s: %v %s", ref, err, out)
	}
	return ref
}
