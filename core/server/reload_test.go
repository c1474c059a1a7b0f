package server

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// reloadCount is conveyor_config_reloads_total{result}.
func reloadCount(t *testing.T, s *Server, result string) float64 {
	t.Helper()
	fams, err := s.metrics.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "conveyor_config_reloads_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no conveyor_config_reloads_total{result=%q}", result)
	return 0
}

// TestReloadRefusedAndNeedsRestart: a bad file changes nothing and says
// where it is wrong; a server setting that changed is reported as needing
// a restart and not applied; the outcome is counted, kept for GET
// /v1/reload and shown on the nodes page; only an admin may reload.
func TestReloadRefusedAndNeedsRestart(t *testing.T) {
	u := newUIServer(t, false)
	s := u.s
	path := filepath.Join(t.TempDir(), "conveyor.hcl")
	s.paths = []string{path}
	before := s.config()
	before.Server.LogLevel = "info" // as loading a file gives
	write := func(src string) {
		if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	server := fmt.Sprintf("server {\n  name = \"ui-test\"\n  data_dir = %q\n  http_addr = \"127.0.0.1:0\"\n  api { token = %q }\n}\n",
		before.Server.DataDir, configuredToken)

	write(server + "job \"x\" {\n  step \"s\" { run = \"echo ${HOME}\" }\n}\n")
	res := s.Reload(context.Background(), ReloadAPI, "test", false)
	if res.OK || !regexp.MustCompile(regexp.QuoteMeta(path)+`:8:\d+: Error: Variables not allowed`).MatchString(res.Error) {
		t.Fatalf("bad file: %+v", res)
	}
	if s.config() != before || reloadCount(t, s, "failure") != 1 || reloadCount(t, s, "success") != 0 {
		t.Fatalf("a refused reload changed the configuration or was not counted")
	}

	write(server) // no node, no job; another http_addr
	res = s.Reload(context.Background(), ReloadSIGHUP, "", false)
	if !res.OK || !slices.Equal(res.NeedsRestart, []string{"server.http_addr"}) {
		t.Fatalf("reload: %+v", res)
	}
	for _, want := range []string{"job removed: hello", "job removed: deploy", "node removed: n1"} {
		if !slices.Contains(res.Changes, want) {
			t.Errorf("changes %q lack %q", res.Changes, want)
		}
	}
	if got := s.config(); got.Server.HTTPAddr != before.Server.HTTPAddr || got.Job("hello") != nil {
		t.Fatalf("after the reload: http_addr %q (must stay until a restart), job hello %v", got.Server.HTTPAddr, got.Job("hello"))
	}
	if reloadCount(t, s, "success") != 1 {
		t.Fatalf("the reload was not counted")
	}

	c := u.browser(t)
	u.signIn(t, c)
	_, page := u.call(t, c, "GET", "/ui/nodes", nil, true)
	for _, want := range []string{`id="reload"`, "Configuration reloaded", "(sighup)", "needs restart: server.http_addr", "job removed: hello"} {
		if !strings.Contains(page, want) {
			t.Errorf("the nodes page lacks %q", want)
		}
	}
	req, _ := http.NewRequest("GET", u.url+"/v1/reload", nil)
	req.Header.Set("Authorization", "Bearer "+configuredToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/reload: %v %v", resp, err)
	}
	resp.Body.Close()
	req, _ = http.NewRequest("POST", u.url+"/v1/reload", nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("POST /v1/reload without a token: %v %v", resp, err)
	}
	resp.Body.Close()
}
