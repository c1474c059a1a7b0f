package server

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/store"
)

// api sends an API request with token (none when empty) and a JSON body
// (none when nil) and returns the status and body.
func (u *uiServer) api(t *testing.T, method, path, token string, body any) (int, string) {
	t.Helper()
	code, _, b := apiRequest(t, u.url, method, path, token, body)
	return code, b
}

// issue creates a token through the API with the bootstrap token.
func (u *uiServer) issue(t *testing.T, name string, role store.Role) TokenResponse {
	t.Helper()
	code, body := u.api(t, "POST", "/v1/tokens", configuredToken, TokenRequest{Name: name, Role: role})
	var tr TokenResponse
	if code != http.StatusCreated || json.Unmarshal([]byte(body), &tr) != nil || len(tr.Secret) != 64 || tr.Role != role || tr.SHA256 != "" {
		t.Fatalf("create token %s: %d %s", name, code, body)
	}
	return tr
}

// TestTriggerParamsAPI: the attack of issue 13 (-p BASH_ENV=... ran a
// command as the agent's user) and its kin are refused with 400 and
// queue nothing; declared parameters get their defaults.
func TestTriggerParamsAPI(t *testing.T) {
	u := newUIServer(t, false)
	tests := []struct {
		name   string
		params map[string]string
		code   int
		want   string
	}{
		{"BASH_ENV", map[string]string{"BASH_ENV": "$(touch /tmp/x; id >&2)"}, 400, "BASH_ENV is not a parameter of the job (it declares MSG, N)"},
		{"PATH", map[string]string{"PATH": "/tmp"}, 400, "PATH is not a parameter"},
		{"LD_PRELOAD", map[string]string{"LD_PRELOAD": "/tmp/x.so"}, 400, "LD_PRELOAD is not a parameter"},
		{"IFS", map[string]string{"IFS": "/"}, 400, "IFS is not a parameter"},
		{"A=B", map[string]string{"A=B": "x"}, 400, `\"A=B\" is no parameter name`},
		{"empty name", map[string]string{"": "x"}, 400, `\"\" is no parameter name`},
		{"outside choices", map[string]string{"N": "7"}, 400, `N=\"7\" is not one of the choices [\"1\" \"42\"]`},
		{"declared", map[string]string{"N": "42"}, 201, `"N": "42"`},
		{"defaults", nil, 201, `"MSG": ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := u.api(t, "POST", "/v1/jobs/hello/builds", configuredToken, TriggerRequest{Params: tt.params})
			if code != tt.code || !strings.Contains(body, tt.want) {
				t.Errorf("%d %s; want %d and %s", code, body, tt.code, tt.want)
			}
		})
	}
	if list, err := u.s.builds.List("hello", 0); err != nil || len(list) != 2 {
		t.Errorf("%d builds queued, want the 2 accepted (%v)", len(list), err)
	}
	if code, body := u.api(t, "POST", "/v1/jobs/deploy/builds", configuredToken, nil); code != 400 || !strings.Contains(body, "VERSION is required (it has no default)") {
		t.Errorf("a required parameter left out: %d %s", code, body)
	}
	code, body := u.api(t, "GET", "/v1/jobs", configuredToken, nil)
	var jobs []JobStatus
	if code != 200 || json.Unmarshal([]byte(body), &jobs) != nil || len(jobs) != 2 || len(jobs[0].Params) != 2 ||
		jobs[0].Params[1].Name != "N" || *jobs[0].Params[1].Default != "1" || jobs[0].Params[1].Required || !jobs[1].Params[0].Required {
		t.Errorf("GET /v1/jobs does not list the declared parameters: %d %s", code, body)
	}
}

// TestTokenRoles: each role may use its routes and no more; tokens are
// stored hashed; a revoked token is refused at once.
func TestTokenRoles(t *testing.T) {
	u := newUIServer(t, false)
	if _, err := u.s.builds.Trigger("hello", nil); err != nil {
		t.Fatal(err)
	}
	tokens := map[store.Role]string{store.RoleAdmin: configuredToken}
	for _, r := range []store.Role{store.RoleRead, store.RoleTrigger} {
		tokens[r] = u.issue(t, "ci-"+string(r), r).Secret
	}
	tokens["admin2"] = u.issue(t, "ops", store.RoleAdmin).Secret
	const (
		R, T, A = 1, 2, 3 // least role of each route
	)
	routes := []struct {
		method, path string
		least        int
		ok           int // the answer of an allowed request here
	}{
		{"GET", "/v1/nodes", R, 200},
		{"GET", "/v1/jobs", R, 200},
		{"GET", "/v1/jobs/hello/builds", R, 200},
		{"GET", "/v1/jobs/hello/builds/1", R, 200},
		{"GET", "/v1/plugins", R, 200},
		{"GET", "/metrics", R, 200},
		{"POST", "/v1/jobs/hello/builds", T, 201},
		{"POST", "/v1/jobs/hello/builds/1/cancel", T, 409}, // cancelled by the first allowed
		{"GET", "/v1/nodes/n1/secret", A, 404},             // its launcher is not loaded
		{"DELETE", "/v1/nodes/n1", A, 409},                 // it is configured
		{"GET", "/v1/nodes/n1", R, 200},
		{"POST", "/v1/nodes/n1/drain", A, 200},
		{"POST", "/v1/nodes/n1/online", A, 200},      // drained just before
		{"POST", "/v1/nodes/n1/disconnect", A, 409},  // no link: its launcher is not loaded
		{"POST", "/v1/nodes/n1/launch", A, 409},      // 200 unless launching at that moment
		{"POST", "/v1/nodes/n1/approve-key", A, 400}, // no fingerprint
		{"GET", "/v1/tokens", A, 200},
		{"DELETE", "/v1/tokens/nope", A, 404},
	}
	for i, who := range []struct {
		role  store.Role
		token string
		rank  int
	}{{store.RoleRead, tokens[store.RoleRead], R}, {store.RoleTrigger, tokens[store.RoleTrigger], T},
		{store.RoleAdmin, tokens["admin2"], A}, {store.RoleAdmin, configuredToken, A}} {
		for _, rt := range routes {
			code, body := u.api(t, rt.method, rt.path, who.token, nil)
			want := rt.ok
			if rt.ok == 409 && code == 200 {
				want = 200
			}
			if who.rank < rt.least {
				want = http.StatusForbidden
			}
			if code != want {
				t.Errorf("%s token: %s %s: %d %s, want %d", who.role, rt.method, rt.path, code, body, want)
			}
			if code == http.StatusForbidden && !strings.Contains(body, "role") {
				t.Errorf("%s token: %s %s: 403 without saying why: %s", who.role, rt.method, rt.path, body)
			}
		}
		if code, _ := u.api(t, "POST", "/v1/tokens", who.token, TokenRequest{Name: "x-" + strconv.Itoa(i), Role: store.RoleAdmin}); (who.rank == A) != (code == http.StatusCreated) {
			t.Errorf("%s token creating an admin token: %d", who.role, code)
		}
	}

	// Bad requests.
	for _, req := range []TokenRequest{{Name: "ci-read", Role: store.RoleRead}, {Name: "bootstrap", Role: store.RoleRead},
		{Name: "a b", Role: store.RoleRead}, {Name: "ok", Role: "root"}} {
		if code, body := u.api(t, "POST", "/v1/tokens", configuredToken, req); code != 400 && code != 409 {
			t.Errorf("create %+v: %d %s, want 400 or 409", req, code, body)
		}
	}
	if code, _ := u.api(t, "DELETE", "/v1/tokens/bootstrap", configuredToken, nil); code != 400 {
		t.Errorf("revoking the bootstrap token through the API: %d, want 400", code)
	}

	// The list names and roles, never a hash or a token.
	code, body := u.api(t, "GET", "/v1/tokens", configuredToken, nil)
	var list []store.Token
	if code != 200 || json.Unmarshal([]byte(body), &list) != nil || len(list) != 6 || list[0].Name != BootstrapToken || list[0].Role != store.RoleAdmin {
		t.Errorf("token list: %d %s", code, body)
	}
	for _, tok := range tokens {
		if strings.Contains(body, tok) {
			t.Errorf("the token list holds a token")
		}
	}
	if strings.Contains(body, "sha256") {
		t.Errorf("the token list holds hashes: %s", body)
	}
	// Stored hashed: the database never holds a token.
	db, err := os.ReadFile(filepath.Join(u.s.config().Server.DataDir, "builds.db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []store.Role{store.RoleRead, store.RoleTrigger} {
		if bytes.Contains(db, []byte(tokens[r])) {
			t.Errorf("builds.db holds the %s token in clear", r)
		}
	}

	// Revoked: refused at once.
	if code, body := u.api(t, "DELETE", "/v1/tokens/ci-trigger", configuredToken, nil); code != 200 || !strings.Contains(body, `"role": "trigger"`) {
		t.Fatalf("revoke: %d %s", code, body)
	}
	if code, _ := u.api(t, "GET", "/v1/nodes", tokens[store.RoleTrigger], nil); code != http.StatusUnauthorized {
		t.Errorf("a revoked token: %d, want 401", code)
	}
}

// TestUIRoles: a session has its token's role: the pages show only the
// actions it allows, the others are refused, and revoking the token ends
// its sessions.
func TestUIRoles(t *testing.T) {
	u := newUIServer(t, false)
	if _, err := u.s.builds.Trigger("hello", nil); err != nil {
		t.Fatal(err)
	}
	readTok, trigTok := u.issue(t, "viewer", store.RoleRead).Secret, u.issue(t, "ci", store.RoleTrigger).Secret

	reader := u.browser(t)
	csrf := u.signInWith(t, reader, readTok)
	_, page := u.call(t, reader, "GET", "/ui/jobs/hello", nil, true)
	if strings.Contains(page, `id="trigger-form"`) || !strings.Contains(page, "viewer (read)") {
		t.Errorf("a read session sees the trigger form or not its role:\n%s", page)
	}
	if _, page := u.call(t, reader, "GET", "/ui/jobs/hello/builds/1", nil, true); strings.Contains(page, `id="cancel"`) {
		t.Errorf("a read session sees the cancel button")
	}
	for _, rt := range []struct{ method, path string }{
		{"POST", "/ui/jobs/hello/builds"}, {"POST", "/ui/jobs/hello/builds/1/cancel"}, {"GET", "/ui/nodes/n1/secret"},
	} {
		var form url.Values
		if rt.method == "POST" {
			form = url.Values{"csrf": {csrf}}
		}
		if resp, body := u.call(t, reader, rt.method, rt.path, form, true); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "read role may not") {
			t.Errorf("read session %s %s: %d %s, want 403", rt.method, rt.path, resp.StatusCode, body)
		}
	}
	if resp, _ := u.call(t, reader, "POST", "/ui/logout", url.Values{"csrf": {csrf}}, true); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("a read session cannot sign out: %d", resp.StatusCode)
	}

	trig := u.browser(t)
	csrf = u.signInWith(t, trig, trigTok)
	if _, page := u.call(t, trig, "GET", "/ui/jobs/hello", nil, true); !strings.Contains(page, `id="trigger-form"`) {
		t.Errorf("a trigger session lacks the trigger form")
	}
	if resp, _ := u.call(t, trig, "POST", "/ui/jobs/hello/builds", url.Values{"csrf": {csrf}}, true); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("a trigger session cannot trigger: %d", resp.StatusCode)
	}
	if resp, _ := u.call(t, trig, "GET", "/ui/nodes/n1/secret", nil, true); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a trigger session reads a node secret: %d, want 403", resp.StatusCode)
	}

	// Revoking the token ends its session, on its next request.
	if code, _ := u.api(t, "DELETE", "/v1/tokens/ci", configuredToken, nil); code != 200 {
		t.Fatalf("revoke: %d", code)
	}
	if resp, _ := u.call(t, trig, "POST", "/ui/jobs/hello/builds", url.Values{"csrf": {csrf}}, true); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a session of a revoked token triggers: %d, want 401", resp.StatusCode)
	}
	if resp, _ := u.call(t, trig, "GET", "/ui/jobs", nil, true); resp.StatusCode != http.StatusSeeOther ||
		!strings.HasPrefix(resp.Header.Get("Location"), "/ui/login") {
		t.Errorf("a session of a revoked token sees a page: %d", resp.StatusCode)
	}
}

// TestUIParamsForm: the trigger form shows each declared parameter: its
// name, description, default, and a select for choices.
func TestUIParamsForm(t *testing.T) {
	u := newUIServer(t, false)
	c := u.browser(t)
	u.signIn(t, c)
	_, page := u.call(t, c, "GET", "/ui/jobs/hello", nil, true)
	for _, want := range []string{
		`<input type="hidden" name="key" value="MSG">`, `<input id="param-MSG" name="value" value="" autocomplete="off">`, "what to say",
		`<select id="param-N" name="value"><option value="1" selected>1</option><option value="42">42</option></select>`,
		`(default: <code>1</code>)`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the hello job's form lacks %q:\n%s", want, page)
		}
	}
	_, page = u.call(t, c, "GET", "/ui/jobs/deploy", nil, true)
	for _, want := range []string{`<input id="param-VERSION" name="value" value="" autocomplete="off" required>`, "required",
		"the &lt;version&gt; to deploy"} {
		if !strings.Contains(page, want) {
			t.Errorf("the deploy job's form lacks %q:\n%s", want, page)
		}
	}
	// The jobs page offers Build now only where no parameter is required.
	_, page = u.call(t, c, "GET", "/ui/jobs", nil, true)
	if !strings.Contains(page, `data-build-now="hello"`) || strings.Contains(page, `data-build-now="deploy"`) {
		t.Errorf("Build now buttons: %s", page)
	}
}

// TestAuthRateLimit: wrong tokens from one address are answered 429 with
// Retry-After once its burst is spent, the right token included, until
// time refills it; another address is not affected; the failures are in
// /metrics.
func TestAuthRateLimit(t *testing.T) {
	u := newUIServer(t, false)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	u.s.auth.now = func() time.Time { return now }
	h := u.s.routes()
	do := func(addr, method, path, token string, form url.Values) *httptest.ResponseRecorder {
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		r := httptest.NewRequest(method, path, body)
		r.RemoteAddr = addr
		if token != "" {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		if form != nil {
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	const attacker, user = "192.0.2.7:40000", "198.51.100.3:50000"
	for i := 0; i < failureBurst; i++ {
		if w := do(attacker, "GET", "/v1/nodes", "guess-"+strconv.Itoa(i), nil); w.Code != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d, want 401", i, w.Code)
		}
	}
	for _, tok := range []string{"one-more-guess", configuredToken} {
		w := do(attacker, "GET", "/v1/nodes", tok, nil)
		if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "2" {
			t.Errorf("after %d wrong tokens: %d Retry-After %q, want 429 and 2", failureBurst, w.Code, w.Header().Get("Retry-After"))
		}
	}
	// The sign-in form shares the address's bucket.
	if w := do(attacker, "POST", "/ui/login", "", url.Values{"token": {configuredToken}}); w.Code != http.StatusTooManyRequests ||
		w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), "Too many wrong tokens") {
		t.Errorf("sign-in from the throttled address: %d %q", w.Code, w.Header().Get("Retry-After"))
	}
	// Another address is not locked out.
	if w := do(user, "GET", "/v1/nodes", configuredToken, nil); w.Code != http.StatusOK {
		t.Errorf("the right token from another address: %d, want 200", w.Code)
	}
	// Time refills the bucket: one more guess every failureRate.
	now = now.Add(failureRate)
	if w := do(attacker, "GET", "/v1/nodes", configuredToken, nil); w.Code != http.StatusOK {
		t.Errorf("the right token %v later: %d, want 200", failureRate, w.Code)
	}
	if w := do(attacker, "GET", "/v1/nodes", "guess", nil); w.Code != http.StatusUnauthorized {
		t.Errorf("a guess %v later: %d, want 401", failureRate, w.Code)
	}
	if w := do(attacker, "GET", "/v1/nodes", "guess", nil); w.Code != http.StatusTooManyRequests {
		t.Errorf("a second guess at once: %d, want 429", w.Code)
	}
	// UI sign-in failures count from another address, with their own limit.
	for i := 0; i < failureBurst; i++ {
		if w := do("203.0.113.9:1", "POST", "/ui/login", "", url.Values{"token": {"guess"}}); w.Code != http.StatusUnauthorized {
			t.Fatalf("sign-in guess %d: %d, want 401", i, w.Code)
		}
	}
	if w := do("203.0.113.9:1", "POST", "/ui/login", "", url.Values{"token": {"guess"}}); w.Code != http.StatusTooManyRequests {
		t.Errorf("sign-in after %d wrong tokens: %d, want 429", failureBurst, w.Code)
	}
	// IPv6: one /64 is one address.
	for i := 0; i < failureBurst; i++ {
		do("[2001:db8::"+strconv.Itoa(i+1)+"]:1", "GET", "/v1/nodes", "guess", nil)
	}
	if w := do("[2001:db8::ffff]:1", "GET", "/v1/nodes", configuredToken, nil); w.Code != http.StatusTooManyRequests {
		t.Errorf("another address of the same IPv6 /64: %d, want 429", w.Code)
	}

	w := do(user, "GET", "/metrics", configuredToken, nil)
	for _, want := range []string{
		`conveyor_auth_failures_total{reason="invalid_token",surface="api"} 21`,
		`conveyor_auth_failures_total{reason="rate_limited",surface="api"} 4`,
		`conveyor_auth_failures_total{reason="invalid_token",surface="ui"} 10`,
		`conveyor_auth_failures_total{reason="rate_limited",surface="ui"} 2`,
	} {
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", w.Body.String())
	}
}

// TestOriginScheme: a POST whose Origin names this host under another
// scheme is cross-origin (http://host and https://host are two origins).
func TestOriginScheme(t *testing.T) {
	u := newUIServer(t, false)
	host := strings.TrimPrefix(u.url, "http://")
	for _, tc := range []struct {
		origin, proto string
		code          int
	}{
		{"https://" + host, "", http.StatusForbidden},
		{"http://" + host, "", http.StatusSeeOther},
		{"http://" + host, "https", http.StatusForbidden},
		{"https://" + host, "https", http.StatusSeeOther},
		{"ftp://" + host, "", http.StatusForbidden},
		{"null", "", http.StatusForbidden},
	} {
		req, _ := http.NewRequest("POST", u.url+"/ui/login", strings.NewReader(url.Values{"token": {configuredToken}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", tc.origin)
		if tc.proto != "" {
			req.Header.Set("X-Forwarded-Proto", tc.proto)
		}
		resp, err := u.browser(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("Origin %s (X-Forwarded-Proto %q): %d, want %d", tc.origin, tc.proto, resp.StatusCode, tc.code)
		}
	}
}

// TestBootstrapTokenMigrates: an installation's existing data_dir/api-token
// keeps working after the upgrade, with the admin role.
func TestBootstrapTokenMigrates(t *testing.T) {
	dir := t.TempDir()
	const old = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data", TokenFileName), []byte(old+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, loadConfig(t, dir, ""))
	for _, ep := range []struct{ method, path string }{{"GET", "/v1/tokens"}, {"DELETE", "/v1/nodes/n1"}, {"GET", "/v1/nodes"}} {
		if code, _, body := ts.do(t, ep.method, ep.path, old); code == http.StatusUnauthorized || code == http.StatusForbidden {
			t.Errorf("%s %s with the existing token: %d %s", ep.method, ep.path, code, body)
		}
	}
	if !strings.Contains(ts.log.String(), "bootstrap API token (admin role) loaded") {
		t.Errorf("the log does not say the token is the admin bootstrap token:\n%s", ts.log)
	}
}
