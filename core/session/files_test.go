package session

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// establishedWith is established with an agent announcing features.
func establishedWith(t *testing.T, features ...string) (*harness, *Agent) {
	t.Helper()
	h := newHarness(t, Options{})
	h.connect(false)
	hs := h.startHandshake()
	a := h.agent
	a.nonce = newNonce(1)
	a.sendRaw(&wire.Hello{Node: a.node, AgentVersion: wire.VersionWithFeatures("2.0.0", features...), OS: "linux", Arch: "amd64", Nonce: a.nonce}, 0, 0, nil)
	a.authenticate(a.challenge(true))
	agent := handshakeOK(t, hs, false)
	h.startServe()
	return h, agent
}

// sinkFile is what a recordingSink got of one file.
type sinkFile struct {
	mode  fs.FileMode
	data  []byte
	final bool
}

type recordingSink struct {
	files map[string]*sinkFile
	order []string
}

func (r *recordingSink) Chunk(path string, mode fs.FileMode, off int64, data []byte, final bool) error {
	f := r.files[path]
	if f == nil {
		f = &sinkFile{mode: mode}
		r.files[path] = f
		r.order = append(r.order, path)
	}
	if off != int64(len(f.data)) {
		return errors.New("gap")
	}
	f.data = append(f.data, data...)
	f.final = final
	return nil
}

// TestCollect: the master asks with a Collect, the agent's FileChunks go
// to the sink, its Output to the log, its Exit ends the collection.
func TestCollect(t *testing.T) {
	h, agent := establishedWith(t, wire.FeatureCollect, wire.FeatureStdin)
	if agent.Version != "2.0.0" || !reflect.DeepEqual(agent.Features, []string{"collect", "stdin"}) {
		t.Fatalf("agent %+v", agent)
	}
	req := &wire.Collect{BuildID: "app#4", StepIndex: 2, Workdir: "app/4", Patterns: []string{"dist/*"}}
	var log chunkWriter
	sink := &recordingSink{files: map[string]*sinkFile{}}
	done := make(chan stepResult, 1)
	h.goroutine(func() {
		res, err := h.s.Collect(context.Background(), req, &log, sink)
		done <- stepResult{res, err}
	})
	a := h.agent
	if _, got := expectInSession[*wire.Collect](a); !reflect.DeepEqual(got, req) {
		t.Fatalf("agent got %+v, want %+v", got, req)
	}
	a.send(&wire.FileChunk{BuildID: "app#4", Path: "dist/a", Mode: 0o755, Data: []byte("ab")})
	a.send(&wire.FileChunk{BuildID: "app#4", Path: "dist/a", Mode: 0o755, Offset: 2, Data: []byte("c"), Final: true})
	a.send(&wire.FileChunk{BuildID: "other#1", Path: "x", Final: true}) // no collection of that build
	a.send(&wire.Output{BuildID: "app#4", StepIndex: 2, Stream: wire.StreamStderr, Data: []byte("note\n")})
	a.send(&wire.Exit{BuildID: "app#4", StepIndex: 2, Code: 1, Error: `no file matches "x"`})
	r := wait(t, done, "Collect")
	if r.err != nil || *r.res != (StepResult{Code: 1, Error: `no file matches "x"`}) {
		t.Fatalf("Collect = %+v, %v", r.res, r.err)
	}
	if f := sink.files["dist/a"]; len(sink.order) != 1 || f == nil || string(f.data) != "abc" || !f.final || f.mode != 0o755 {
		t.Fatalf("sink got %q", sink.order)
	}
	if got := bytes.Join(log.nonEmpty(), nil); string(got) != "note\n" {
		t.Fatalf("log %q", got)
	}
	if c := h.s.Counters(); c.Unexpect != 1 {
		t.Errorf("counters %+v, want the stray chunk counted", c)
	}
}

// TestStdinFrames: a step's input goes as Stdin frames, the first before
// its RunStep, the last with EOF.
func TestStdinFrames(t *testing.T) {
	h, _ := establishedWith(t, wire.FeatureStdin)
	in := bytes.Repeat([]byte("0123456789"), StdinChunk/10*2+7)
	req := &wire.RunStep{BuildID: "app#1", Command: "cat"}
	done := make(chan stepResult, 1)
	h.goroutine(func() {
		res, err := h.s.RunStepInput(context.Background(), req, in, &chunkWriter{})
		done <- stepResult{res, err}
	})
	a := h.agent
	var got []byte
	_, first := expectInSession[*wire.Stdin](a)
	got = append(got, first.Data...)
	expectInSession[*wire.RunStep](a)
	for {
		_, m := expectInSession[*wire.Stdin](a)
		if m.BuildID != "app#1" || len(m.Data) > StdinChunk {
			t.Fatalf("stdin frame %s, %d bytes", m.BuildID, len(m.Data))
		}
		got = append(got, m.Data...)
		if m.EOF {
			break
		}
	}
	if !bytes.Equal(got, in) || first.EOF {
		t.Fatalf("stdin %d bytes, want %d", len(got), len(in))
	}
	a.send(&wire.Exit{BuildID: "app#1"})
	if r := wait(t, done, "RunStepInput"); r.err != nil || r.res.Code != 0 {
		t.Fatalf("RunStepInput = %+v, %v", r.res, r.err)
	}
}

// TestFeaturesRequired: an agent that does not announce a feature gets no
// frame that needs it: the request fails at once, saying why.
func TestFeaturesRequired(t *testing.T) {
	h, agent := establishedWith(t)
	if agent.Features != nil || h.s.Supports(wire.FeatureCollect) {
		t.Fatalf("agent %+v", agent)
	}
	_, err := h.s.Collect(context.Background(), &wire.Collect{BuildID: "a#1", Patterns: []string{"x"}}, &chunkWriter{}, &recordingSink{})
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Collect: %v", err)
	}
	_, err = h.s.RunStepInput(context.Background(), &wire.RunStep{BuildID: "a#1"}, []byte("x"), &chunkWriter{})
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("RunStepInput: %v", err)
	}
	// An agent that predates RunStep.Shell refuses rather than running the
	// step under /bin/sh.
	_, err = h.s.RunStep(context.Background(), &wire.RunStep{BuildID: "a#1", Command: "true", Shell: []string{"bash", "-l", "-c"}}, &chunkWriter{})
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), `"shell"`) {
		t.Fatalf("RunStep with a shell: %v", err)
	}
	if _, m, ok := h.agent.tryRecv(); ok && !slices.Contains([]wire.Type{wire.TypePing, wire.TypeAck}, m.Type()) {
		t.Fatalf("the agent got %v", m.Type())
	}
}
