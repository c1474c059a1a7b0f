package session

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// TestStdin: Stdin frames feed a step's standard input, the first one
// before its RunStep, the rest after; a step without them reads
// /dev/null; input left unread by a step that ended is dropped, not given
// to the build's next step.
func TestStdin(t *testing.T) {
	m, _, _ := start(t, Config{Node: "n1", Secret: secret})
	hf, h := m.hello()
	if v, f := wire.SplitFeatures(h.AgentVersion); !slices.Contains(f, wire.FeatureStdin) || !slices.Contains(f, wire.FeatureCollect) {
		t.Fatalf("hello announces version %q, features %q", v, f)
	}
	m.accept(hf, h, 0x51)

	in := make([]byte, 300<<10)
	_, _ = rand.Read(in)
	m.send(&wire.Stdin{BuildID: "j#1", Data: in[:1000]})
	m.send(&wire.RunStep{BuildID: "j#1", Command: "cat", Workdir: "j/1"})
	for off := 1000; off < len(in); off += 64 << 10 {
		m.send(&wire.Stdin{BuildID: "j#1", Data: in[off:min(off+64<<10, len(in))], EOF: off+64<<10 >= len(in)})
	}
	outs, exits := m.collect("j#1")
	if exits["j#1"].Code != 0 || outs["j#1"] != string(in) {
		t.Fatalf("cat of %d bytes: exit %+v, %d bytes out", len(in), exits["j#1"], len(outs["j#1"]))
	}

	// A step that ends before reading; the rest of its input comes after
	// its end, then the next step reads /dev/null.
	m.send(&wire.Stdin{BuildID: "j#2", Data: []byte("unread")})
	out, exit := m.runStep(&wire.RunStep{BuildID: "j#2", Command: "echo early", Workdir: "j/2"})
	if exit.Code != 0 || out != "early\n" {
		t.Fatalf("early step: %q %+v", out, exit)
	}
	m.send(&wire.Stdin{BuildID: "j#2", Data: []byte("more"), EOF: true})
	out, exit = m.runStep(&wire.RunStep{BuildID: "j#2", StepIndex: 1, Command: "readlink /proc/self/fd/0; cat", Workdir: "j/2"})
	if exit.Code != 0 || out != "/dev/null\n" {
		t.Fatalf("next step: %q %+v, want /dev/null and nothing read", out, exit)
	}
	// Empty input: a pipe at its end at once.
	m.send(&wire.Stdin{BuildID: "j#3", EOF: true})
	out, exit = m.runStep(&wire.RunStep{BuildID: "j#3", Command: "test -p /dev/stdin && wc -c", Workdir: "j/3"})
	if exit.Code != 0 || strings.TrimSpace(out) != "0" {
		t.Fatalf("empty stdin: %q %+v", out, exit)
	}
}

// TestCollect: a Collect is answered with the matching files as FileChunk
// frames, a note per missing pattern and refused file in the log, and an
// Exit saying how it went; a file leading outside the workspace is never
// sent.
func TestCollectFiles(t *testing.T) {
	m, a, _ := start(t, Config{Node: "n1", Secret: secret})
	m.handshake(0x52)
	ws := filepath.Join(a.cfg.Workdir, "j", "1")
	big := make([]byte, 700<<10)
	_, _ = rand.Read(big)
	outside := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(outside, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, exit := m.runStep(&wire.RunStep{BuildID: "j#1", Command: "mkdir -p dist && echo small > dist/a.txt && ln -s " + outside + " dist/leak.txt", Workdir: "j/1"})
	if exit.Code != 0 {
		t.Fatalf("setup step: %+v", exit)
	}
	if err := os.WriteFile(filepath.Join(ws, "dist", "big.bin"), big, 0o640); err != nil {
		t.Fatal(err)
	}

	m.send(&wire.Collect{BuildID: "j#1", StepIndex: 1, Workdir: "j/1", Patterns: []string{"dist/*", "report.xml"}})
	files := map[string][]byte{}
	modes := map[string]uint32{}
	var log strings.Builder
	var end *wire.Exit
	for end == nil {
		_, msg := m.nextAny()
		switch msg := msg.(type) {
		case *wire.FileChunk:
			if msg.BuildID != "j#1" || msg.Offset != uint64(len(files[msg.Path])) || len(msg.Data) > 256<<10 {
				t.Fatalf("chunk %s at %d (have %d), %d bytes", msg.Path, msg.Offset, len(files[msg.Path]), len(msg.Data))
			}
			files[msg.Path] = append(files[msg.Path], msg.Data...)
			modes[msg.Path] = msg.Mode
		case *wire.Output:
			if msg.StepIndex != 1 || msg.Stream != wire.StreamStderr {
				t.Fatalf("output %+v", msg)
			}
			log.Write(msg.Data)
		case *wire.Exit:
			end = msg
		}
	}
	if !bytes.Equal(files["dist/big.bin"], big) || string(files["dist/a.txt"]) != "small\n" || modes["dist/big.bin"] != 0o640 || len(files) != 2 {
		t.Fatalf("files %d: big %d bytes mode %o, a.txt %q", len(files), len(files["dist/big.bin"]), modes["dist/big.bin"], files["dist/a.txt"])
	}
	if end.StepIndex != 1 || end.Code != 2 || !strings.Contains(end.Error, `no file matches "report.xml"`) || !strings.Contains(end.Error, "dist/leak.txt: not sent: it leads outside the workspace") {
		t.Fatalf("exit %+v", end)
	}
	if !strings.Contains(log.String(), "conveyor-agent: artifacts: dist/leak.txt: not sent") {
		t.Fatalf("log %q", log.String())
	}
}

// nextAny returns the agent's next delivered frame but pings and pongs.
func (m *master) nextAny() (*wire.Frame, wire.Message) {
	m.t.Helper()
	for {
		f := m.recv()
		if f.Type == wire.TypePing || f.Type == wire.TypePong {
			continue
		}
		msg, err := f.Message()
		if err != nil {
			m.t.Fatal(err)
		}
		return f, msg
	}
}
