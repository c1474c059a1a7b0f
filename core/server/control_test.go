package server

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/conveyor-ci/conveyor/core/store"
)

// TestUINodeControls: the node page shows an admin its controls (CSRF
// forms) and its history; drain and online work through them, a read
// session sees neither the controls nor may post them, and a control
// without its CSRF token is refused.
func TestUINodeControls(t *testing.T) {
	u := newUIServer(t, false)
	admin := u.browser(t)
	csrf := u.signIn(t, admin)
	_, page := u.call(t, admin, "GET", "/ui/nodes/n1", nil, true)
	for _, want := range []string{`id="drain-form"`, `id="launch-form"`, `id="disconnect-form"`, `name="csrf" value="` + csrf + `"`, "Nothing was done to this node yet."} {
		if !strings.Contains(page, want) {
			t.Errorf("the node page lacks %q:\n%s", want, page)
		}
	}
	if resp, page := u.call(t, admin, "GET", "/ui/nodes/nope", nil, true); resp.StatusCode != http.StatusNotFound || !strings.Contains(page, "no such node: nope") {
		t.Errorf("an unknown node's page: %d\n%s", resp.StatusCode, page)
	}
	if resp, _ := u.call(t, admin, "POST", "/ui/nodes/n1/drain", url.Values{"reason": {"disk swap"}}, true); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a drain without its CSRF token: %d, want 403", resp.StatusCode)
	}
	resp, _ := u.call(t, admin, "POST", "/ui/nodes/n1/drain", url.Values{"csrf": {csrf}, "reason": {"disk swap"}}, true)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/nodes/n1" {
		t.Fatalf("drain: %d to %q, want 303 to the node page", resp.StatusCode, resp.Header.Get("Location"))
	}
	_, page = u.call(t, admin, "GET", "/ui/nodes/n1", nil, true)
	for _, want := range []string{`id="node-drain"`, "disk swap", `id="online-form"`, `data-action="drain"`} {
		if !strings.Contains(page, want) {
			t.Errorf("the drained node's page lacks %q:\n%s", want, page)
		}
	}
	if _, page := u.call(t, admin, "GET", "/ui/nodes", nil, true); !strings.Contains(page, `<span class="badge">drained</span>`) {
		t.Errorf("the nodes page does not show the node drained")
	}
	// The API shows the same, with who did it.
	code, body := u.api(t, "GET", "/v1/nodes/n1", configuredToken, nil)
	var d NodeDetail
	if code != 200 || json.Unmarshal([]byte(body), &d) != nil || d.Drain == nil || d.Drain.Reason != "disk swap" ||
		len(d.History) != 1 || d.History[0].Action != "drain" || d.History[0].By != BootstrapToken {
		t.Errorf("GET /v1/nodes/n1: %d %s", code, body)
	}
	// A failed control says why on the page.
	if resp, page := u.call(t, admin, "POST", "/ui/nodes/n1/disconnect", url.Values{"csrf": {csrf}}, true); resp.StatusCode != http.StatusConflict ||
		!strings.Contains(page, "no link to its agent") {
		t.Errorf("disconnect of a node without a link: %d\n%s", resp.StatusCode, page)
	}
	if resp, _ := u.call(t, admin, "POST", "/ui/nodes/n1/online", url.Values{"csrf": {csrf}}, true); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("online: %d", resp.StatusCode)
	}

	reader := u.browser(t)
	rcsrf := u.signInWith(t, reader, u.issue(t, "viewer", store.RoleRead).Secret)
	_, page = u.call(t, reader, "GET", "/ui/nodes/n1", nil, true)
	if strings.Contains(page, `id="node-controls"`) || !strings.Contains(page, `data-action="online"`) {
		t.Errorf("a read session sees the controls, or not the history:\n%s", page)
	}
	if resp, _ := u.call(t, reader, "POST", "/ui/nodes/n1/drain", url.Values{"csrf": {rcsrf}}, true); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a read session drains: %d, want 403", resp.StatusCode)
	}
}
