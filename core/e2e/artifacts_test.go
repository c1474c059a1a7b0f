package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/store"
)

// TestArtifactsAndStdin: over the embedded Kafka broker, a build's files
// travel agent → master as FileChunk frames through the session and are
// downloaded byte-identical through the API and the CLI; a failed build's
// files are kept too; a step's stdin attribute reaches its process as
// Stdin frames, and a step without one reads /dev/null. Over the local
// launcher's stdio transport a step's input comes back as an artifact.
func TestArtifactsAndStdin(t *testing.T) {
	input := make([]byte, 200<<10)
	_, _ = rand.Read(input)
	inputFile := filepath.Join(t.TempDir(), "input.bin")
	if err := os.WriteFile(inputFile, []byte(hex.EncodeToString(input)), 0o600); err != nil {
		t.Fatal(err)
	}
	inputSum := sha256.Sum256([]byte(hex.EncodeToString(input)))
	c := start(t, fmt.Sprintf(`
node "k1" {
  launcher = "kafka"
  labels   = ["k1"]
  kafka {}
}
node "l1" {
  launcher = "local"
  labels   = ["l1"]
  local {
    command = [%s, "-transport", "stdio", "-name", "l1", "-workdir", %s]
  }
}`, cluster.HCLString(filepath.Join(bin, "conveyor-agent")), cluster.HCLString(filepath.Join(t.TempDir(), "l1"))), fmt.Sprintf(`
job "art" {
  labels    = ["k1"]
  artifacts = ["dist/**/*.bin", "report.xml", "missing/*.txt"]
  step "make" {
    run = "mkdir -p dist/x && head -c 12582912 /dev/urandom > dist/x/big.bin && echo '<ok/>' > report.xml && chmod 0750 dist/x/big.bin && sha256sum dist/x/big.bin report.xml"
  }
}
job "failing" {
  labels    = ["k1"]
  artifacts = ["report.xml"]
  step "test" { run = "echo '<failed/>' > report.xml; exit 1" }
}
job "too-big" {
  labels            = ["k1"]
  artifacts         = ["*.bin"]
  artifacts_max_mib = 1
  step "make" { run = "head -c 1048576 /dev/zero > a.bin && head -c 1 /dev/zero > b.bin" }
}
job "fed" {
  labels = ["k1"]
  step "cat" {
    run   = "cat"
    stdin = "line one\nline two\n"
  }
  step "sum" {
    run   = "sha256sum"
    stdin = file(%s)
  }
  step "none" { run = "readlink /proc/self/fd/0" }
}
job "local" {
  labels    = ["l1"]
  artifacts = ["out/copy.txt"]
  step "copy" {
    run   = "mkdir out && cat > out/copy.txt"
    stdin = file(%s)
  }
}`, cluster.HCLString(inputFile), cluster.HCLString(inputFile)))
	c.StartAgent("k1", c.Secret("k1"))
	c.WaitOnline("k1", "l1")
	ctx := context.Background()

	t.Run("artifacts", func(t *testing.T) {
		b, log := c.Run("art", nil)
		if b.Status != store.StatusSuccess || !strings.Contains(b.Reason, `artifacts: no file matches "missing/*.txt"`) {
			t.Fatalf("status %s (%s), want success noting the missing pattern\n%s", b.Status, b.Reason, log)
		}
		if !strings.Contains(string(log), `conveyor-agent: artifacts: no file matches "missing/*.txt"`) {
			t.Errorf("the log does not note the missing pattern:\n%s", log)
		}
		if len(b.Artifacts) != 2 || b.Artifacts[0].Path != "dist/x/big.bin" || b.Artifacts[0].Size != 12<<20 || b.Artifacts[0].Mode != 0o750 || b.Artifacts[1].Path != "report.xml" {
			t.Fatalf("artifacts %+v", b.Artifacts)
		}
		list, err := c.API.Artifacts(ctx, "art", b.Number)
		if err != nil || len(list) != 2 {
			t.Fatalf("list: %+v, %v", list, err)
		}
		for _, a := range list {
			var buf bytes.Buffer
			if _, err := c.API.DownloadArtifact(ctx, "art", b.Number, a.Path, &buf); err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(buf.Bytes())
			got := hex.EncodeToString(sum[:])
			// The record, the download and the step's own sha256sum agree.
			if got != a.SHA256 || int64(buf.Len()) != a.Size || !strings.Contains(string(log), got+"  "+a.Path) {
				t.Errorf("%s: downloaded %d bytes, sha256 %s; record %+v", a.Path, buf.Len(), got, a)
			}
		}

		// The raw download: headers, and only recorded paths.
		get := func(path string) *http.Response {
			req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://%s/v1/jobs/art/builds/%d/artifacts/%s", c.HTTPAddr, b.Number, path), nil)
			req.Header.Set("Authorization", "Bearer "+c.Token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp
		}
		resp := get("report.xml")
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/octet-stream" ||
			resp.Header.Get("Content-Disposition") != "attachment; filename=report.xml" || resp.ContentLength != 6 {
			t.Errorf("download: %d %v", resp.StatusCode, resp.Header)
		}
		for _, p := range []string{"..%2F..%2F" + fmt.Sprint(b.Number) + ".log", "dist/x", "nope.bin"} {
			if resp := get(p); resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusBadRequest {
				t.Errorf("GET artifact %s: %d", p, resp.StatusCode)
			}
		}

		// The CLI lists them, and downloads them all, checked.
		cli := func(args ...string) string {
			cmd := exec.Command(c.Bin("conveyor"), append([]string{"artifacts"}, args...)...)
			cmd.Env = append(os.Environ(), "CONVEYOR_ADDR="+c.HTTPAddr, "CONVEYOR_TOKEN="+c.Token)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("conveyor artifacts %q: %v\n%s", args, err, out)
			}
			return string(out)
		}
		table := cli("art", fmt.Sprint(b.Number))
		for _, a := range list {
			if !strings.Contains(table, a.Path) || !strings.Contains(table, a.SHA256) {
				t.Errorf("conveyor artifacts lacks %s:\n%s", a.Path, table)
			}
		}
		if !strings.Contains(table, "-rwxr-x---") {
			t.Errorf("conveyor artifacts does not show big.bin's mode:\n%s", table)
		}
		dir := t.TempDir()
		cli("-o", dir, "art", fmt.Sprint(b.Number))
		for _, a := range list {
			data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(a.Path)))
			sum := sha256.Sum256(data)
			if err != nil || hex.EncodeToString(sum[:]) != a.SHA256 {
				t.Errorf("CLI download of %s: %v, sha256 %x", a.Path, err, sum)
			}
		}
		if fi, err := os.Stat(filepath.Join(dir, "dist", "x", "big.bin")); err != nil || fi.Mode().Perm() != 0o750 {
			t.Errorf("big.bin downloaded with mode %v (%v), want 0750", fi.Mode(), err)
		}
	})

	t.Run("failed build keeps its artifacts", func(t *testing.T) {
		b, _ := c.Run("failing", nil)
		if b.Status != store.StatusFailure || !strings.Contains(b.Reason, "code 1") || len(b.Artifacts) != 1 || b.Artifacts[0].Size != 10 {
			t.Fatalf("status %s (%s), artifacts %+v", b.Status, b.Reason, b.Artifacts)
		}
	})

	t.Run("beyond artifacts_max_mib", func(t *testing.T) {
		// Exactly the limit in a.bin, one byte more in b.bin: the build
		// fails and keeps nothing it could not finish.
		b, log := c.Run("too-big", nil)
		if b.Status != store.StatusFailure || !strings.Contains(b.Reason, "exceed their limit of 1 MiB (artifacts_max_mib)") {
			t.Fatalf("status %s (%s), want a failure over the limit\n%s", b.Status, b.Reason, log)
		}
		for _, a := range b.Artifacts {
			if a.Path == "b.bin" {
				t.Fatalf("b.bin recorded beyond the limit: %+v", b.Artifacts)
			}
		}
	})

	t.Run("over stdio", func(t *testing.T) {
		// The local launcher's agent speaks over its stdin/stdout: the
		// step's input, fed by Stdin frames, comes back as an artifact.
		b, log := c.Run("local", nil)
		if b.Status != store.StatusSuccess || len(b.Artifacts) != 1 || b.Artifacts[0].SHA256 != hex.EncodeToString(inputSum[:]) {
			t.Fatalf("status %s (%s), artifacts %+v\n%s", b.Status, b.Reason, b.Artifacts, log)
		}
	})

	t.Run("stdin", func(t *testing.T) {
		b, log := c.Run("fed", nil)
		want := "line one\nline two\n" + hex.EncodeToString(inputSum[:]) + "  -\n/dev/null\n"
		if b.Status != store.StatusSuccess || string(log) != want {
			t.Fatalf("status %s (%s), log %q, want %q", b.Status, b.Reason, log, want)
		}
	})
}

// buildTimeout bounds the waits of these tests: generous, for a busy
// machine; no test relies on it for its timing.
const buildTimeout = 90 * time.Second

// TestArtifactsSurviveCrashes: while a 48 MiB artifact travels, the
// Kafka launcher plugin (and its embedded broker) is killed: the master
// restarts it, the agent resumes its session, and the transfer goes on
// where the master stopped acknowledging; or the master itself is killed:
// restarted, it re-attaches to the build and collects the artifacts
// again. Either way the build succeeds with the file byte-identical.
func TestArtifactsSurviveCrashes(t *testing.T) {
	const plugin = "conveyor-launcher-kafka"
	t.Run("plugin", func(t *testing.T) {
		artifactsCrash(t, func(c *cluster.Cluster) {
			pid := c.PluginPID(plugin)
			if pid == 0 {
				t.Fatalf("no %s process under the master", plugin)
			}
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			c.WaitFor("the master to restart the plugin", buildTimeout, func() bool {
				p := c.PluginPID(plugin)
				return p != 0 && p != pid
			})
		})
	})
	t.Run("master", func(t *testing.T) {
		c := artifactsCrash(t, func(c *cluster.Cluster) {
			c.KillServer()
			c.StartServer()
		})
		if !strings.Contains(c.ServerLog(), "artifacts_again=true") {
			t.Errorf("the restarted master does not say it collected the artifacts again:\n%s", c.ServerLog())
		}
	})
}

// artifactsCrash runs a build archiving a 48 MiB file and calls crash once
// the master wrote the file's first bytes; it returns the cluster.
func artifactsCrash(t *testing.T, crash func(c *cluster.Cluster)) *cluster.Cluster {
	const size = 48 << 20
	c := start(t, `
node "k1" {
  launcher          = "kafka"
  labels            = ["k1"]
  heartbeat_timeout = "5s"
  kafka {}
}`, fmt.Sprintf(`
job "art" {
  labels    = ["k1"]
  artifacts = ["big.bin"]
  step "make" { run = "head -c %d /dev/urandom > big.bin && sha256sum big.bin" }
}`, size))
	c.StartAgent("k1", c.Secret("k1"), "-heartbeat", "500ms", "-heartbeat-timeout", "3s", "-buffer-mib", "4")
	c.WaitOnline("k1")
	ctx := context.Background()
	b, err := c.API.Trigger(ctx, "art", nil)
	if err != nil {
		t.Fatal(err)
	}
	partial := filepath.Join(c.Dir, "data", "logs", "art", fmt.Sprint(b.Number)+".artifacts", "big.bin")
	var atKill int64
	c.WaitFor("the transfer to start", buildTimeout, func() bool {
		fi, err := os.Stat(partial)
		if err == nil {
			atKill = fi.Size()
		}
		return err == nil && fi.Size() > 0
	})
	crash(c)
	t.Logf("crashed with %d of %d bytes written", atKill, size)
	got := c.WaitBuild("art", b.Number, 3*buildTimeout)
	log := c.Log("art", b.Number)
	if got.Status != store.StatusSuccess || len(got.Artifacts) != 1 || got.Artifacts[0].Size != size {
		t.Fatalf("status %s (%s), artifacts %+v\n%s", got.Status, got.Reason, got.Artifacts, log)
	}
	var buf bytes.Buffer
	if _, err := c.API.DownloadArtifact(ctx, "art", b.Number, "big.bin", &buf); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	if hex.EncodeToString(sum[:]) != got.Artifacts[0].SHA256 || !strings.Contains(string(log), got.Artifacts[0].SHA256+"  big.bin") {
		t.Fatalf("downloaded sha256 %x, recorded %s; the step printed:\n%s", sum, got.Artifacts[0].SHA256, log)
	}
	return c
}
