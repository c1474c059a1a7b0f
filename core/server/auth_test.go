package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/core/config"
)

// syncBuffer is a log output safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testServer is a server without launchers, nodes or jobs, serving on a
// loopback port until the test ends.
type testServer struct {
	srv     *Server
	url     string
	dataDir string
	log     *syncBuffer
}

// loadConfig writes a configuration with the given api block into dir and
// loads it.
func loadConfig(t *testing.T, dir, apiBlock string) *config.Config {
	t.Helper()
	src := fmt.Sprintf("server {\n  http_addr = \"127.0.0.1:0\"\n  data_dir = \"data\"\n  log_level = \"trace\"\n  %s\n}\n", apiBlock)
	path := filepath.Join(dir, "conveyor.hcl")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, diags := config.Load(path)
	if diags.HasErrors() {
		t.Fatalf("config: %v", diags)
	}
	return cfg
}

// startServer starts a server on cfg; it stops when the test ends.
func startServer(t *testing.T, cfg *config.Config) *testServer {
	t.Helper()
	log := &syncBuffer{}
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: log})
	ctx, cancel := context.WithCancel(context.Background())
	s, err := New(ctx, cfg, Options{}, logger)
	if err != nil {
		cancel()
		t.Fatalf("New: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &testServer{srv: s, url: "http://" + s.Addr(), dataDir: cfg.Server.DataDir, log: log}
}

// do sends a request with the token (none when empty) and returns the
// status, the WWW-Authenticate header and the body.
func (ts *testServer) do(t *testing.T, method, path, token string) (int, string, string) {
	t.Helper()
	return apiRequest(t, ts.url, method, path, token, nil)
}

// apiRequest sends an API request to the server at base with token (none
// when empty) and a JSON body (none when nil), and returns the status, the
// WWW-Authenticate header and the body.
func apiRequest(t *testing.T, base, method, path, token string, body any) (int, string, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate"), string(b)
}

// endpoint is one route of the API, with the status it answers an
// authorised request here (no node, job or build exists).
type endpoint struct {
	method, path string
	write        bool
	ok           int
}

var endpoints = []endpoint{
	{"POST", "/v1/jobs/hello/builds", true, http.StatusNotFound},
	{"POST", "/v1/jobs/hello/builds/1/cancel", true, http.StatusNotFound},
	{"GET", "/v1/nodes/n1/secret", true, http.StatusNotFound},
	{"DELETE", "/v1/nodes/n1", true, http.StatusNotFound},
	{"POST", "/v1/nodes/n1/drain", true, http.StatusNotFound},
	{"POST", "/v1/nodes/n1/launch", true, http.StatusNotFound},
	{"GET", "/v1/nodes", false, http.StatusOK},
	{"GET", "/v1/jobs", false, http.StatusOK},
	{"GET", "/v1/jobs/hello/builds", false, http.StatusNotFound},
	{"GET", "/v1/jobs/hello/builds/1", false, http.StatusNotFound},
	{"GET", "/v1/jobs/hello/builds/1/log", false, http.StatusNotFound},
	{"GET", "/v1/plugins", false, http.StatusOK},
}

const configuredToken = "s3cr3t-t0ken-0123456789abcdef"

func TestAPIAuth(t *testing.T) {
	tests := []struct {
		name       string
		api        string
		publicRead bool
	}{
		{"generated token", "", false},
		{"configured token", `api { token = "` + configuredToken + `" }`, false},
		{"public reads", `api {
    token       = "` + configuredToken + `"
    public_read = true
  }`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, loadConfig(t, t.TempDir(), tt.api))
			token := configuredToken
			if tt.api == "" {
				b, err := os.ReadFile(filepath.Join(ts.dataDir, TokenFileName))
				if err != nil {
					t.Fatal(err)
				}
				token = strings.TrimSpace(string(b))
			}

			if code, _, _ := ts.do(t, "GET", "/healthz", ""); code != http.StatusOK {
				t.Errorf("GET /healthz without a token: %d, want 200", code)
			}
			for _, ep := range endpoints {
				for _, cred := range []struct{ name, token string }{
					{"no token", ""}, {"wrong token", "not-" + token}, {"right token", token},
				} {
					want := http.StatusUnauthorized
					if cred.token == token || (!ep.write && tt.publicRead) {
						want = ep.ok
					}
					ts.srv.auth.limiter.reset() // this test's wrong tokens are not a brute force
					code, challenge, body := ts.do(t, ep.method, ep.path, cred.token)
					if code != want {
						t.Errorf("%s %s with %s: %d %s, want %d", ep.method, ep.path, cred.name, code, body, want)
						continue
					}
					if code != http.StatusUnauthorized {
						continue
					}
					if !strings.HasPrefix(challenge, "Bearer") {
						t.Errorf("%s %s with %s: WWW-Authenticate %q, want Bearer", ep.method, ep.path, cred.name, challenge)
					}
					var e struct{ Error string }
					if json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
						t.Errorf("%s %s with %s: body %q, want a JSON error", ep.method, ep.path, cred.name, body)
					}
				}
			}
			if strings.Contains(ts.log.String(), token) {
				t.Errorf("the server log holds the token:\n%s", ts.log)
			}
			if !strings.Contains(ts.log.String(), "API token") {
				t.Errorf("the server log does not say where the token comes from:\n%s", ts.log)
			}
		})
	}
}

func TestBearer(t *testing.T) {
	tests := []struct {
		header string
		want   string
		ok     bool
	}{
		{"", "", false},
		{"Bearer abc", "abc", true},
		{"bearer abc", "abc", true},
		{"Bearer  abc ", "abc", true},
		{"Bearer", "", false},
		{"Bearer ", "", false},
		{"Basic YWxhZGRpbjpvcGVuc2VzYW1l", "", false},
		{"abc", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.header, func(t *testing.T) {
			r, _ := http.NewRequest("GET", "/", nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			got, ok := bearer(r)
			if got != tt.want || ok != tt.ok {
				t.Errorf("bearer(%q) = %q, %v; want %q, %v", tt.header, got, ok, tt.want, tt.ok)
			}
		})
	}
}

var hexToken = regexp.MustCompile(`^[0-9a-f]{64}\n$`)

// TestGeneratedTokenFile: the token file is created 0600 with 32 random
// bytes in hex, and kept across restarts.
func TestGeneratedTokenFile(t *testing.T) {
	dir := t.TempDir()
	cfg := loadConfig(t, dir, "")
	path := filepath.Join(cfg.Server.DataDir, TokenFileName)
	var first string
	for i := range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		s, err := New(ctx, cfg, Options{}, hclog.NewNullLogger())
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		cancel()
		if err := s.Serve(ctx); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("mode %04o, want 0600", st.Mode().Perm())
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !hexToken.Match(b) {
			t.Fatalf("token file holds %q, want 64 hex digits", b)
		}
		if i == 0 {
			first = string(b)
		} else if string(b) != first {
			t.Errorf("the token changed across a restart")
		}
	}
}

// TestTokenFileRefused: a token file others may read, or one that holds
// no usable token, stops the server with a clear error.
func TestTokenFileRefused(t *testing.T) {
	const tok = "0123456789abcdef0123456789abcdef\n"
	tests := []struct {
		name    string
		content string // "" with dir: a directory
		dir     bool
		mode    os.FileMode
		want    string
	}{
		{"group readable", tok, false, 0o640, "group or others may access it"},
		{"world readable", tok, false, 0o604, "chmod 600"},
		{"group writable", tok, false, 0o620, "has mode 0620"},
		{"empty", "", false, 0o600, "at least 16 characters"},
		{"short", "abc\n", false, 0o600, "at least 16 characters"},
		{"two tokens", "0123456789abcdef 0123456789abcdef\n", false, 0o600, "one token"},
		{"directory", "", true, 0o700, "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := loadConfig(t, t.TempDir(), "")
			if err := os.MkdirAll(cfg.Server.DataDir, 0o700); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(cfg.Server.DataDir, TokenFileName)
			var err error
			if tt.dir {
				err = os.Mkdir(path, tt.mode)
			} else {
				err = os.WriteFile(path, []byte(tt.content), tt.mode)
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil { // past the umask
				t.Fatal(err)
			}
			s, err := New(context.Background(), cfg, Options{}, hclog.NewNullLogger())
			if err == nil {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				_ = s.Serve(ctx)
				t.Fatal("New accepted the token file")
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q, want %q about %s", err, tt.want, path)
			}
		})
	}
}
