package server

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/core/builds"
	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/core/metrics"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/plugins"
	"github.com/conveyor-ci/conveyor/core/session"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// uiServer is a server with one node, whose launcher is not loaded (it
// stays offline), and one job, whose builds stay queued: what the UI's
// handlers need, without plugin processes.
type uiServer struct {
	s   *Server
	url string
	log *syncBuffer
}

func newUIServer(t *testing.T, publicRead bool) *uiServer {
	t.Helper()
	dir := t.TempDir()
	cfg := &config.Config{
		Server: config.Server{Name: "ui-test", DataDir: dir, API: config.API{Token: configuredToken, PublicRead: publicRead}},
		Nodes:  []*config.Node{{Name: "n1", Launcher: "gone", Labels: []string{"linux"}, Executors: 2}},
		Jobs: []*config.Job{{Name: "hello", Labels: []string{"linux"},
			Params: []config.Param{{Name: "MSG", Default: ptr(""), Description: "what to say"},
				{Name: "N", Default: ptr("1"), Choices: []string{"1", "42"}}},
			Steps: []config.Step{{Name: "greet", Run: "echo hi"}, {Name: "after", Run: "true"}}},
			{Name: "deploy", Labels: []string{"linux"}, Params: []config.Param{{Name: "VERSION", Description: "the <version> to deploy"}},
				Steps: []config.Step{{Name: "go", Run: "true"}}}},
	}
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	log := &syncBuffer{}
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: log})
	s := &Server{logger: logger, store: st, plugins: plugins.NewManager(logger.Named("launcher")),
		auth: newAuthenticator(configuredToken, publicRead), metrics: metrics.New(metrics.Sources{})}
	s.cfg.Store(cfg)
	s.auth.onFailure = s.metrics.AuthFailure
	s.nodes = nodes.NewManager(cfg, s.plugins, nodes.Options{Store: st, Control: st}, logger.Named("node"))
	s.builds = builds.New(cfg, st, s.nodes, nil, logger.Named("build"))
	ts := httptest.NewServer(s.routes())
	t.Cleanup(ts.Close)
	return &uiServer{s: s, url: ts.URL, log: log}
}

func ptr[T any](v T) *T { return &v }

// browser is an HTTP client that keeps cookies and does not follow
// redirects, so tests see them.
func (u *uiServer) browser(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// call sends a request; a non-nil form is POSTed. html sets the Accept
// header of a browser navigating.
func (u *uiServer) call(t *testing.T, c *http.Client, method, path string, form url.Values, html bool) (*http.Response, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, u.url+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if html {
		req.Header.Set("Accept", "text/html,application/xhtml+xml")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

// signIn logs c in with the bootstrap token and returns the CSRF token of
// its session.
func (u *uiServer) signIn(t *testing.T, c *http.Client) string {
	t.Helper()
	return u.signInWith(t, c, configuredToken)
}

// signInWith logs c in with token and returns the CSRF token of its
// session.
func (u *uiServer) signInWith(t *testing.T, c *http.Client, token string) string {
	t.Helper()
	resp, body := u.call(t, c, "POST", "/ui/login", url.Values{"token": {token}, "next": {"/ui/jobs"}}, true)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/jobs" {
		t.Fatalf("sign in: %d %s %s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	_, page := u.call(t, c, "GET", "/ui/jobs", nil, true)
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token in the page of a signed-in browser:\n%s", page)
	}
	return m[1]
}

// TestUIAccess: who gets what of every UI route, signed in or not, with
// and without public_read, and state-changing requests without their
// CSRF token refused.
func TestUIAccess(t *testing.T) {
	type route struct {
		method, path string
		write        bool
		// ok is the status of an allowed request (POSTs carrying the CSRF
		// token).
		ok int
	}
	routes := []route{
		{"GET", "/ui/nodes", false, http.StatusOK},
		{"GET", "/ui/jobs", false, http.StatusOK},
		{"GET", "/ui/jobs/hello", false, http.StatusOK},
		{"GET", "/ui/builds", false, http.StatusOK},
		{"GET", "/ui/transport", false, http.StatusOK},
		{"GET", "/ui/jobs/hello/builds/1", false, http.StatusOK},
		{"GET", "/ui/jobs/hello/builds/1/log", false, http.StatusOK},
		// The node's launcher has no secret manager: the API's answer.
		{"GET", "/ui/nodes/n1/secret", true, http.StatusNotFound},
		{"POST", "/ui/jobs/hello/builds", true, http.StatusSeeOther},
		{"POST", "/ui/jobs/hello/builds/1/cancel", true, http.StatusSeeOther},
		{"POST", "/ui/logout", true, http.StatusSeeOther},
	}
	for _, publicRead := range []bool{false, true} {
		t.Run("public_read="+map[bool]string{false: "false", true: "true"}[publicRead], func(t *testing.T) {
			u := newUIServer(t, publicRead)
			if _, err := u.s.builds.Trigger("hello", nil); err != nil {
				t.Fatal(err)
			}
			anon := u.browser(t)
			for _, rt := range routes {
				var form url.Values
				if rt.method == "POST" {
					form = url.Values{}
				}
				// Without a session: a page for the public, else the login
				// page for a browser and 401 for a script.
				for _, html := range []bool{true, false} {
					resp, body := u.call(t, anon, rt.method, rt.path, form, html)
					switch {
					case !rt.write && publicRead:
						if resp.StatusCode != rt.ok {
							t.Errorf("anonymous %s %s: %d, want %d", rt.method, rt.path, resp.StatusCode, rt.ok)
						}
						if strings.Contains(body, `name="csrf"`) || strings.Contains(body, "data-connect") {
							t.Errorf("anonymous %s %s shows a form or connect button of signed-in users", rt.method, rt.path)
						}
					case html && rt.method == "GET":
						if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || loc != "/ui/login?next="+url.QueryEscape(rt.path) {
							t.Errorf("anonymous browser %s %s: %d to %q, want the login page", rt.method, rt.path, resp.StatusCode, loc)
						}
					default:
						if resp.StatusCode != http.StatusUnauthorized {
							t.Errorf("anonymous %s %s (html %v): %d, want 401", rt.method, rt.path, html, resp.StatusCode)
						}
					}
				}
			}

			for _, rt := range routes {
				c := u.browser(t)
				csrf := u.signIn(t, c)
				if rt.method == "GET" {
					if resp, body := u.call(t, c, "GET", rt.path, nil, true); resp.StatusCode != rt.ok {
						t.Errorf("signed-in GET %s: %d %s, want %d", rt.path, resp.StatusCode, body, rt.ok)
					}
					continue
				}
				for _, bad := range []struct{ name, csrf string }{
					{"no CSRF token", ""}, {"a wrong CSRF token", strings.Repeat("0", len(csrf))}, {"a mangled one", "zz" + csrf},
				} {
					form := url.Values{}
					if bad.csrf != "" {
						form.Set("csrf", bad.csrf)
					}
					if resp, _ := u.call(t, c, rt.method, rt.path, form, true); resp.StatusCode != http.StatusForbidden {
						t.Errorf("signed-in %s %s with %s: %d, want 403", rt.method, rt.path, bad.name, resp.StatusCode)
					}
				}
				req, _ := http.NewRequest(rt.method, u.url+rt.path, strings.NewReader(url.Values{"csrf": {csrf}}.Encode()))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				req.Header.Set("Origin", "http://evil.example")
				if resp, err := c.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
					t.Errorf("cross-origin %s %s: %v %v, want 403", rt.method, rt.path, resp.StatusCode, err)
				} else {
					resp.Body.Close()
				}
				if resp, body := u.call(t, c, rt.method, rt.path, url.Values{"csrf": {csrf}}, true); resp.StatusCode != rt.ok {
					t.Errorf("signed-in %s %s with its CSRF token: %d %s, want %d", rt.method, rt.path, resp.StatusCode, body, rt.ok)
				}
			}
			if b, err := u.s.builds.Get("hello", 1); err != nil || b.Status != store.StatusCancelled {
				t.Errorf("build 1 after the UI's cancel: %+v, %v; want cancelled", b, err)
			}
		})
	}
}

// TestUISignIn: the token signs a browser in with a cookie that is not the
// token and does not work as one; signing out ends the session.
func TestUISignIn(t *testing.T) {
	u := newUIServer(t, false)
	c := u.browser(t)
	if resp, body := u.call(t, c, "POST", "/ui/login", url.Values{"token": {"not-" + configuredToken}}, true); resp.StatusCode != http.StatusUnauthorized ||
		resp.Header.Get("Set-Cookie") != "" || !strings.Contains(body, "not an API token of this server") {
		t.Errorf("wrong token: %d, cookie %q", resp.StatusCode, resp.Header.Get("Set-Cookie"))
	}
	req, _ := http.NewRequest("POST", u.url+"/ui/login", strings.NewReader(url.Values{"token": {configuredToken}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "http://evil.example")
	if resp, err := c.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-origin sign-in: %v %v, want 403", resp.StatusCode, err)
	}

	for next, want := range map[string]string{
		"/ui/jobs/hello?from=1": "/ui/jobs/hello?from=1",
		"//evil.example/ui/":    "/ui/nodes",
		"https://evil.example/": "/ui/nodes",
		`/\evil.example`:        "/ui/nodes",
		"/v1/nodes":             "/ui/nodes",
		"":                      "/ui/nodes",
	} {
		resp, _ := u.call(t, u.browser(t), "POST", "/ui/login", url.Values{"token": {configuredToken}, "next": {next}}, true)
		if got := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || got != want {
			t.Errorf("sign in with next %q: %d to %q, want %q", next, resp.StatusCode, got, want)
		}
	}

	resp, _ := u.call(t, c, "POST", "/ui/login", url.Values{"token": {configuredToken}}, true)
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == sessionCookie {
			cookie = ck
		}
	}
	if cookie == nil {
		t.Fatalf("no session cookie: %v", resp.Header["Set-Cookie"])
	}
	if !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Path != "/ui/" || cookie.MaxAge <= 0 {
		t.Errorf("cookie %+v: want HttpOnly, SameSite=Strict, Path=/ui/ and a lifetime", cookie)
	}
	if strings.Contains(cookie.Value, configuredToken) {
		t.Errorf("the cookie holds the token")
	}
	// Neither the cookie's value nor the session's CSRF token is a bearer
	// token; nor is the token a cookie.
	c = u.browser(t)
	csrf := u.signIn(t, c)
	base, _ := url.Parse(u.url + "/ui/")
	for _, ck := range c.Jar.Cookies(base) {
		if ck.Name == sessionCookie {
			cookie = ck
		}
	}
	api := &testServer{url: u.url}
	for _, tok := range []string{cookie.Value, csrf} {
		if code, _, _ := api.do(t, "GET", "/v1/nodes", tok); code != http.StatusUnauthorized {
			t.Errorf("the API took a UI credential as its token: %d", code)
		}
	}
	req, _ = http.NewRequest("GET", u.url+"/ui/nodes", nil)
	req.AddCookie(&http.Cookie{Name: sessionCookie, Value: configuredToken})
	if resp, err := http.DefaultTransport.RoundTrip(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the token as a cookie: %v %v, want 401", resp.StatusCode, err)
	}

	if resp, _ := u.call(t, c, "POST", "/ui/logout", url.Values{"csrf": {csrf}}, true); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign out: %d", resp.StatusCode)
	}
	// The old cookie, replayed, is refused.
	req, _ = http.NewRequest("GET", u.url+"/ui/nodes", nil)
	req.AddCookie(cookie)
	if resp, err := http.DefaultTransport.RoundTrip(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a signed-out session's cookie: %v %v, want 401", resp.StatusCode, err)
	}
	for _, secret := range []string{configuredToken, cookie.Value, csrf} {
		if strings.Contains(u.log.String(), secret) {
			t.Errorf("the server log holds a credential:\n%s", u.log)
		}
	}
}

// TestSessionCookie: only an untampered, unexpired, not revoked cookie of
// this server run is a session.
func TestSessionCookie(t *testing.T) {
	a := newAuthenticator(configuredToken, false)
	now := time.Now()
	a.now = func() time.Time { return now }
	sess, value := a.newSession(a.bootstrap())
	other, otherValue := a.newSession(a.bootstrap())
	revoked, revokedValue := a.newSession(a.bootstrap())
	if err := a.revoke(revoked); err != nil {
		t.Fatal(err)
	}
	id, rest, _ := strings.Cut(value, ".")
	exp, sig, _ := strings.Cut(rest, ".")
	otherID, _, _ := strings.Cut(otherValue, ".")
	_, otherToken := newAuthenticator("another-token-0123456789", false).newSession(identity{ID: BootstrapToken, Role: store.RoleAdmin})
	tests := []struct {
		name  string
		value string
		later time.Duration
		ok    bool
	}{
		{"valid", value, 0, true},
		{"before it expires", value, sessionTTL - time.Second, true},
		{"expired", value, sessionTTL, false},
		{"later expiry", id + "." + exp + "9." + sig, 0, false},
		{"another id", otherID + "." + exp + "." + sig, 0, false},
		{"no signature", id + "." + exp, 0, false},
		{"garbage", "x", 0, false},
		{"the token", configuredToken, 0, false},
		{"revoked", revokedValue, 0, false},
		{"under another token", otherToken, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a.now = func() time.Time { return now.Add(tt.later) }
			r := httptest.NewRequest("GET", "/ui/nodes", nil)
			r.AddCookie(&http.Cookie{Name: sessionCookie, Value: tt.value})
			got, ok := a.session(r)
			if ok != tt.ok || (ok && got.id != sess.id) {
				t.Errorf("session(%q) = %+v, %v; want ok %v", tt.value, got, ok, tt.ok)
			}
		})
	}
	if a.csrf(sess) == a.csrf(other) || strings.Contains(value, a.csrf(sess)) {
		t.Errorf("CSRF tokens must differ per session and from the cookie's signature")
	}
}

// TestSignOutsKept: a restarted server (a new authenticator over the same
// data) keeps its sessions, but not those signed out before.
func TestSignOutsKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), signOutsFile)
	cookie := func(v string) *http.Request {
		r := httptest.NewRequest("GET", "/ui/nodes", nil)
		r.AddCookie(&http.Cookie{Name: sessionCookie, Value: v})
		return r
	}
	a := newAuthenticator(configuredToken, false)
	if err := a.keepSignOuts(path); err != nil {
		t.Fatal(err)
	}
	out, outValue := a.newSession(a.bootstrap())
	_, inValue := a.newSession(a.bootstrap())
	if err := a.revoke(out); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("sign-outs file: %v, %v; want mode 0600", st, err)
	}
	restarted := newAuthenticator(configuredToken, false)
	if err := restarted.keepSignOuts(path); err != nil {
		t.Fatal(err)
	}
	if _, ok := restarted.session(cookie(inValue)); !ok {
		t.Errorf("a session did not survive the restart")
	}
	if _, ok := restarted.session(cookie(outValue)); ok {
		t.Errorf("a signed-out session came back after the restart")
	}
	if err := os.WriteFile(path, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := newAuthenticator(configuredToken, false).keepSignOuts(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("a corrupt sign-outs file: %v", err)
	}
}

// TestUITrigger: the form's parameters reach the build, bad ones are
// refused with the rows kept, and what a build carries shows escaped.
func TestUITrigger(t *testing.T) {
	u := newUIServer(t, false)
	c := u.browser(t)
	csrf := u.signIn(t, c)
	const evil = `<script>alert("x")</script>`
	tests := []struct {
		name   string
		keys   []string
		values []string
		code   int
		want   string // in the answer: an error, or the build's page
	}{
		{"bad name", []string{"MSG", "1BAD"}, []string{"kept", "x"}, http.StatusBadRequest, `&#34;1BAD&#34; is no parameter name`},
		{"undeclared", []string{"MSG", "BASH_ENV"}, []string{"kept", "$(id)"}, http.StatusBadRequest, "BASH_ENV is not a parameter of the job (it declares MSG, N)"},
		{"outside choices", []string{"MSG", "N"}, []string{"kept", "7"}, http.StatusBadRequest, `N=&#34;7&#34; is not one of the choices`},
		{"twice", []string{"MSG", "MSG"}, []string{"kept", "2"}, http.StatusBadRequest, "parameter MSG is given twice"},
		{"params", []string{"MSG", "", "N"}, []string{evil, "", "42"}, http.StatusSeeOther, "/ui/jobs/hello/builds/1"},
		{"none", []string{""}, []string{""}, http.StatusSeeOther, "/ui/jobs/hello/builds/2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			form := url.Values{"csrf": {csrf}, "key": tt.keys, "value": tt.values}
			resp, body := u.call(t, c, "POST", "/ui/jobs/hello/builds", form, true)
			if resp.StatusCode != tt.code {
				t.Fatalf("%d %s, want %d", resp.StatusCode, body, tt.code)
			}
			if got := resp.Header.Get("Location") + body; !strings.Contains(got, tt.want) {
				t.Errorf("answer %q lacks %q", got, tt.want)
			}
			if tt.code == http.StatusBadRequest && !strings.Contains(body, `id="param-MSG" name="value" value="kept"`) {
				t.Errorf("the refused form lost its rows:\n%s", body)
			}
		})
	}
	b, err := u.s.builds.Get("hello", 1)
	if err != nil || b.Params["MSG"] != evil || b.Params["N"] != "42" || len(b.Params) != 2 {
		t.Fatalf("build 1: %+v, %v", b, err)
	}
	if b, err := u.s.builds.Get("hello", 2); err != nil || b.Params["MSG"] != "" || b.Params["N"] != "1" || len(b.Params) != 2 {
		t.Fatalf("build 2 did not get the defaults: %+v, %v", b, err)
	}
	_, page := u.call(t, c, "GET", "/ui/jobs/hello/builds/1", nil, true)
	if strings.Contains(page, evil) || !strings.Contains(page, "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") {
		t.Errorf("the build page does not escape the parameter:\n%s", page)
	}
	for _, want := range []string{`data-build-status="queued"`, `id="cancel"`, "pending", `data-src="/ui/jobs/hello/builds/1/log"`, `id="build-next"`,
		`id="waiting"`, `<a href="/ui/nodes#node-n1">n1</a>`, "not launched yet"} {
		if !strings.Contains(page, want) {
			t.Errorf("the build page lacks %q", want)
		}
	}
	if strings.Contains(page, `id="build-prev"`) {
		t.Errorf("build 1 links to a build before it")
	}
	if _, page := u.call(t, c, "GET", "/ui/jobs", nil, true); !strings.Contains(page, `data-build-now="hello"`) {
		t.Errorf("the jobs page has no Build now button for a signed-in user")
	}
	// Rebuild: the job page's form comes filled with build 1's parameters.
	if _, page := u.call(t, c, "GET", "/ui/jobs/hello?from=1", nil, true); !strings.Contains(page, `value="MSG"`) || !strings.Contains(page, `<option value="42" selected>`) {
		t.Errorf("the rebuild form lacks build 1's parameters:\n%s", page)
	}
	if resp, _ := u.call(t, c, "POST", "/ui/jobs/hello/builds/1/cancel", url.Values{"csrf": {csrf}}, true); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("cancel: %d", resp.StatusCode)
	}
	_, page = u.call(t, c, "GET", "/ui/jobs/hello/builds/1", nil, true)
	if !strings.Contains(page, `data-build-status="cancelled"`) || strings.Contains(page, `id="cancel"`) || !strings.Contains(page, "skipped") ||
		strings.Contains(page, `id="waiting"`) {
		t.Errorf("the cancelled build's page:\n%s", page)
	}
}

// TestUILongLog: a long finished log shows its tail, unless asked for
// the whole.
func TestUILongLog(t *testing.T) {
	u := newUIServer(t, true)
	now := time.Now()
	b := &store.Build{Job: "hello", Status: store.StatusSuccess, QueuedAt: now, StartedAt: &now, FinishedAt: &now, LogSize: 10 << 20}
	if err := u.s.store.Create(b); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ query, offset, note string }{
		{"", `data-offset="6291456"`, "The log is 10.0 MiB: this shows its last 4.0 MiB."},
		{"?full=1", `data-offset="0"`, ""},
	}
	for _, tt := range tests {
		resp, page := u.call(t, http.DefaultClient, "GET", "/ui/jobs/hello/builds/1"+tt.query, nil, true)
		if resp.StatusCode != http.StatusOK || !strings.Contains(page, tt.offset) || (tt.note != "") != strings.Contains(page, "log-tail") ||
			!strings.Contains(page, tt.note) {
			t.Errorf("build page%s: %d, want %s and note %q:\n%s", tt.query, resp.StatusCode, tt.offset, tt.note, page)
		}
	}
	if resp, page := u.call(t, http.DefaultClient, "GET", "/ui/nowhere", nil, true); resp.StatusCode != http.StatusNotFound || !strings.Contains(page, "There is no page /ui/nowhere.") {
		t.Errorf("an unknown page: %d\n%s", resp.StatusCode, page)
	}
}

// TestUIArtifacts: a build's archived files are listed, escaped, and
// download through the API's handler, for who may read.
func TestUIArtifacts(t *testing.T) {
	u := newUIServer(t, false)
	const name = `out/<i>report</i> 1.txt`
	now := time.Now()
	b := &store.Build{Job: "hello", Status: store.StatusSuccess, QueuedAt: now, StartedAt: &now, FinishedAt: &now,
		Artifacts: []store.Artifact{{Path: name, Size: 5, Mode: 0o644, SHA256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}}}
	if err := u.s.store.Create(b); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(u.s.store.ArtifactsDir("hello", b.Number), filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := "/ui/jobs/hello/builds/1/artifacts/out/%3Ci%3Ereport%3C/i%3E%201.txt"
	c := u.browser(t)
	if resp, _ := u.call(t, c, "GET", link, nil, false); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous download: %d, want 401", resp.StatusCode)
	}
	u.signIn(t, c)
	_, page := u.call(t, c, "GET", "/ui/jobs/hello/builds/1", nil, true)
	if strings.Contains(page, "<i>") || !strings.Contains(page, "out/&lt;i&gt;report&lt;/i&gt; 1.txt") || !strings.Contains(page, "0644") ||
		!strings.Contains(page, `href="`+link+`"`) {
		t.Errorf("the build page's artifacts:\n%s", page)
	}
	resp, body := u.call(t, c, "GET", link, nil, false)
	if resp.StatusCode != http.StatusOK || body != "hello" || !strings.HasPrefix(resp.Header.Get("Content-Disposition"), "attachment") {
		t.Errorf("download: %d %q %q", resp.StatusCode, body, resp.Header.Get("Content-Disposition"))
	}
	if resp, _ := u.call(t, c, "GET", "/ui/jobs/hello/builds/1/artifacts/out/other.txt", nil, false); resp.StatusCode != http.StatusNotFound {
		t.Errorf("a path the build did not record: %d, want 404", resp.StatusCode)
	}
}

// TestUIPagesEscape: what nodes, launchers and plugins report shows as
// text in every page.
func TestUIPagesEscape(t *testing.T) {
	u := newUIServer(t, true)
	const evil = `<img src=x onerror="alert(1)">`
	since := time.Now().Add(-90 * time.Second)
	pages := []struct {
		name string
		data any
	}{
		{"nodes", nodesData{Nodes: []nodeView{{Status: nodes.Status{Name: "n1", Launcher: "kafka", Labels: []string{evil},
			State: nodes.StateOffline, Reason: evil, Description: evil, AgentVersion: evil, Platform: evil}, Connect: true}}}},
		{"transport", []transportView{{Transport: nodes.Transport{Node: "n1", Launcher: "kafka", State: nodes.StateOnline, Description: evil,
			Traffic:   session.Traffic{FramesIn: 7, BytesIn: 3 << 20, FramesOut: 9, BytesOut: 512, Connections: 2, Resumes: 1, LastHeard: since, RTT: 1500 * time.Microsecond},
			Link:      &launcher.LinkStats{Connected: true, Endpoint: evil, Since: since, Reconnects: 3, Topics: []launcher.TopicStats{{Name: evil, Direction: launcher.ToAgent, Group: evil, Lag: -1}}},
			LinkError: evil}}}},
		{"error", evil},
		{"login", loginData{Next: evil, Error: evil}},
	}
	for _, p := range pages {
		t.Run(p.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			u.s.render(rec, httptest.NewRequest("GET", "/ui/"+p.name, nil), http.StatusOK, p.name, evil, p.name, p.data)
			body := rec.Body.String()
			if rec.Code != http.StatusOK || strings.Contains(body, "<img") || !strings.Contains(body, "&lt;img src=x") {
				t.Errorf("%d, page not escaped:\n%s", rec.Code, body)
			}
			if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
				t.Errorf("CSP %q", csp)
			}
			if p.name == "nodes" && strings.Contains(body, "data-connect") {
				t.Errorf("the connect button shows to an anonymous user")
			}
			if p.name == "transport" {
				for _, want := range []string{"7 / 9", "3.0 MiB / 512 B", "2 · 1 · 3", "1.5 ms", "master → agent", "unknown", "for 1m 3"} {
					if !strings.Contains(body, want) {
						t.Errorf("the transport page lacks %q:\n%s", want, body)
					}
				}
			}
		})
	}
}

// TestUIStatic: the embedded assets are served with their types.
func TestUIStatic(t *testing.T) {
	u := newUIServer(t, false)
	for path, ctype := range map[string]string{
		"/ui/static/app.js": "javascript", "/ui/static/log.js": "javascript", "/ui/static/style.css": "text/css",
	} {
		resp, body := u.call(t, http.DefaultClient, "GET", path, nil, false)
		if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), ctype) || len(body) < 100 {
			t.Errorf("GET %s: %d %s, %d bytes", path, resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
		}
	}
	if resp, _ := u.call(t, u.browser(t), "GET", "/", nil, true); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/nodes" {
		t.Errorf("GET /: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
}
