package server

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/core/store"
)

// TokenFileName is the file under data_dir holding the API token the
// server generated, used when the configuration sets none.
const TokenFileName = "api-token"

// access is what a route asks of a request: the least role that may use
// it, or open.
type access int

const (
	// open routes need no token (GET /healthz).
	open access = iota
	// read routes need a token of any role, unless server.api.public_read
	// is set.
	read
	// signedIn UI actions need a session of any role, and its CSRF token
	// (signing out); public_read does not open them.
	signedIn
	// trigger routes trigger and cancel builds: the trigger role.
	trigger
	// admin routes give away what lets an agent in (node secrets), delete
	// nodes or manage tokens: the admin role.
	admin
)

// role is the least role that level needs.
func (level access) role() store.Role {
	switch level {
	case trigger:
		return store.RoleTrigger
	case admin:
		return store.RoleAdmin
	}
	return store.RoleRead
}

// BootstrapToken is the name of the first token: the one in
// server.api.token or data_dir/api-token, with the admin role. It is not
// in the token store and cannot be revoked there: change the
// configuration or the file and restart.
const BootstrapToken = "bootstrap"

// identity is who a valid token or UI session speaks for.
type identity struct {
	// ID is the token's ID (BootstrapToken for the first token).
	ID   string
	Name string
	Role store.Role
}

type identityCtxKey struct{}

// identityOf is the identity a request was authenticated as.
func identityOf(ctx context.Context) (identity, bool) {
	id, ok := ctx.Value(identityCtxKey{}).(identity)
	return id, ok
}

// issued is a token of the store, its hash decoded for comparing.
type issued struct {
	identity
	sum [sha256.Size]byte
}

// authenticator checks the bearer token of API requests and the session
// cookie of the web UI's.
type authenticator struct {
	// sum is the SHA-256 of the bootstrap token: requests are compared
	// against it, and against every issued token's, in constant time,
	// whatever their length.
	sum        [sha256.Size]byte
	publicRead bool
	// sessionKey signs the UI's session cookies and derives their CSRF
	// tokens: HMAC-SHA256 of a label under the bootstrap token. Sessions
	// survive a restart (a live log page resumes after one), and a new
	// bootstrap token signs every browser out.
	sessionKey []byte
	// now is the clock of session expiry and of the failure limiter
	// (time.Now; tests move it).
	now func() time.Time
	// limiter slows down the addresses that send wrong tokens.
	limiter *failureLimiter
	// onFailure counts an authentication failure (metrics), when set:
	// surface is "api" or "ui", reason "invalid_token" or "rate_limited".
	onFailure func(surface, reason string)

	mu sync.Mutex
	// tokens are the issued tokens (the store's), kept in step by the
	// token routes.
	tokens []issued
	// revoked holds the sessions signed out before they expire, with
	// their expiry, after which they are dropped from it; revokedPath,
	// when set, keeps them across restarts.
	revoked     map[string]time.Time
	revokedPath string
}

func newAuthenticator(token string, publicRead bool) *authenticator {
	mac := hmac.New(sha256.New, []byte(token))
	mac.Write([]byte("conveyor ui session key"))
	a := &authenticator{sum: sha256.Sum256([]byte(token)), publicRead: publicRead,
		sessionKey: mac.Sum(nil), now: time.Now, revoked: map[string]time.Time{}}
	a.limiter = newFailureLimiter(func() time.Time { return a.now() })
	return a
}

// setTokens replaces the issued tokens the authenticator knows.
func (a *authenticator) setTokens(list []store.Token) error {
	out := make([]issued, 0, len(list))
	for _, t := range list {
		sum, err := hex.DecodeString(t.SHA256)
		if err != nil || len(sum) != sha256.Size {
			return fmt.Errorf("token %q: its stored hash is damaged", t.Name)
		}
		it := issued{identity: identity{ID: t.ID, Name: t.Name, Role: t.Role}}
		copy(it.sum[:], sum)
		out = append(out, it)
	}
	a.mu.Lock()
	a.tokens = out
	a.mu.Unlock()
	return nil
}

// failed counts a failure on surface.
func (a *authenticator) failed(surface, reason string) {
	if a.onFailure != nil {
		a.onFailure(surface, reason)
	}
}

// wrap guards h with the token check that level requires. A request from
// an address that sent too many wrong tokens is answered 429 before its
// token is looked at.
func (a *authenticator) wrap(level access, h http.HandlerFunc) http.HandlerFunc {
	if level == open {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if level == read && a.publicRead {
			h(w, r)
			return
		}
		tok, ok := bearer(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="conveyor"`)
			writeError(w, http.StatusUnauthorized, "this endpoint needs an API token: send it as \"Authorization: Bearer TOKEN\"")
			return
		}
		key := clientKey(r)
		if d := a.limiter.wait(key); d > 0 {
			a.failed("api", "rate_limited")
			w.Header().Set("Retry-After", strconv.Itoa(retryAfter(d)))
			writeError(w, http.StatusTooManyRequests, "too many wrong API tokens from this address: try again later")
			return
		}
		id, ok := a.identify(tok)
		if !ok {
			a.limiter.fail(key)
			a.failed("api", "invalid_token")
			w.Header().Set("WWW-Authenticate", `Bearer realm="conveyor", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "wrong API token")
			return
		}
		if !id.Role.Allows(level.role()) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("token %q has the %s role; this needs the %s role", id.Name, id.Role, level.role()))
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), identityCtxKey{}, id)))
	}
}

// identify returns who tok speaks for. Its hash is compared with every
// token's in constant time, all of them each time.
func (a *authenticator) identify(tok string) (identity, bool) {
	sum := sha256.Sum256([]byte(tok))
	var found identity
	ok := false
	if subtle.ConstantTimeCompare(sum[:], a.sum[:]) == 1 {
		found, ok = a.bootstrap(), true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, t := range a.tokens {
		if subtle.ConstantTimeCompare(sum[:], t.sum[:]) == 1 {
			found, ok = t.identity, true
		}
	}
	return found, ok
}

// bootstrap is the bootstrap token's identity.
func (a *authenticator) bootstrap() identity {
	return identity{ID: BootstrapToken, Name: BootstrapToken, Role: store.RoleAdmin}
}

// byID returns the identity of a token that is still valid.
func (a *authenticator) byID(id string) (identity, bool) {
	if id == BootstrapToken {
		return a.bootstrap(), true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, t := range a.tokens {
		if t.ID == id {
			return t.identity, true
		}
	}
	return identity{}, false
}

// UI sessions: a browser proves once, on the login page, that its user
// holds an API token and gets a session cookie instead. The cookie holds
// a random session id, its expiry, the token's ID and an HMAC of the three
// under sessionKey: neither the token nor anything that works as a bearer
// token. The token's role is looked up at each request, so revoking the
// token ends its sessions.
const (
	// sessionCookie is the session cookie's name.
	sessionCookie = "conveyor_session"
	// sessionTTL is how long a UI session lasts.
	sessionTTL = 12 * time.Hour
	// csrfField is the form field carrying the CSRF token.
	csrfField = "csrf"
)

// uiSession is a signed-in browser.
type uiSession struct {
	id      string
	expires time.Time
	// who is the token the browser signed in with.
	who identity
}

type sessionCtxKey struct{}

// sessionOf is the UI session of a request that carried a valid one.
func sessionOf(ctx context.Context) (uiSession, bool) {
	s, ok := ctx.Value(sessionCtxKey{}).(uiSession)
	return s, ok
}

// mac is HMAC-SHA256 under the session key of the parts, each labelled by
// its use so that no value serves for another.
func (a *authenticator) mac(use string, parts ...string) []byte {
	m := hmac.New(sha256.New, a.sessionKey)
	m.Write([]byte(use))
	for _, p := range parts {
		m.Write([]byte{0})
		m.Write([]byte(p))
	}
	return m.Sum(nil)
}

// newSession starts a UI session for who and returns it with its cookie
// value.
func (a *authenticator) newSession(who identity) (uiSession, string) {
	var raw [16]byte
	_, _ = rand.Read(raw[:])
	s := uiSession{id: hex.EncodeToString(raw[:]), expires: a.now().Add(sessionTTL).Truncate(time.Second), who: who}
	exp := strconv.FormatInt(s.expires.Unix(), 10)
	return s, s.id + "." + exp + "." + who.ID + "." + hex.EncodeToString(a.mac("session", s.id, exp, who.ID))
}

// session returns the valid, unexpired and not revoked session of r's
// cookie, whose token is still valid.
func (a *authenticator) session(r *http.Request) (uiSession, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return uiSession{}, false
	}
	parts := strings.Split(c.Value, ".")
	if len(parts) != 4 {
		return uiSession{}, false
	}
	id, exp, tokenID, sig := parts[0], parts[1], parts[2], parts[3]
	got, err := hex.DecodeString(sig)
	if err != nil || !hmac.Equal(got, a.mac("session", id, exp, tokenID)) {
		return uiSession{}, false
	}
	unix, err := strconv.ParseInt(exp, 10, 64)
	if err != nil {
		return uiSession{}, false
	}
	s := uiSession{id: id, expires: time.Unix(unix, 0)}
	if !a.now().Before(s.expires) {
		return uiSession{}, false
	}
	var ok bool
	if s.who, ok = a.byID(tokenID); !ok {
		return uiSession{}, false // its token was revoked
	}
	a.mu.Lock()
	_, revoked := a.revoked[id]
	a.mu.Unlock()
	return s, !revoked
}

// keepSignOuts keeps the signed-out sessions in path (mode 0600), so that
// a cookie signed out stays refused after a restart, and loads those kept
// there.
func (a *authenticator) keepSignOuts(path string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.revokedPath = path
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("UI sessions: %w", err)
	}
	var kept map[string]int64
	if err := json.Unmarshal(b, &kept); err != nil {
		return fmt.Errorf("UI sessions: %s: %w", path, err)
	}
	for id, exp := range kept {
		a.revoked[id] = time.Unix(exp, 0)
	}
	return nil
}

// revoke signs session s out for good.
func (a *authenticator) revoke(s uiSession) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	kept := map[string]int64{}
	for id, exp := range a.revoked {
		if !now.Before(exp) {
			delete(a.revoked, id)
		} else {
			kept[id] = exp.Unix()
		}
	}
	a.revoked[s.id] = s.expires
	kept[s.id] = s.expires.Unix()
	if a.revokedPath == "" {
		return nil
	}
	b, err := json.Marshal(kept)
	if err != nil {
		return fmt.Errorf("UI sessions: %w", err)
	}
	return writeFileAtomic(a.revokedPath, b)
}

// writeFileAtomic replaces path with b (mode 0600): written aside, synced
// and renamed, so a crash leaves the old file or the new one.
func writeFileAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.Write(b)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// csrf is session s's CSRF token, which every state-changing UI request
// carries in its csrfField form field.
func (a *authenticator) csrf(s uiSession) string {
	return hex.EncodeToString(a.mac("csrf", s.id))
}

// validCSRF reports whether r carries s's CSRF token.
func (a *authenticator) validCSRF(r *http.Request, s uiSession) bool {
	got, err := hex.DecodeString(r.PostFormValue(csrfField))
	want := a.mac("csrf", s.id)
	return err == nil && hmac.Equal(got, want)
}

// sameOrigin reports whether a state-changing request comes from a page
// of this server: browsers send Origin with every POST, and one naming
// another site is refused even with a valid session (a second line of
// defence behind SameSite=Strict and the CSRF token).
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true // not a browser, or a browser that sends none: the CSRF token decides
	}
	u, err := url.Parse(o)
	if err != nil || u.Host != r.Host {
		return false
	}
	scheme := "http"
	if secureRequest(r) {
		scheme = "https"
	}
	return u.Scheme == scheme
}

// wrapUI guards a web UI handler. Pages (read) show to a signed-in
// browser, or to anyone with public_read; the rest (trigger, admin) needs
// a session whose token has the role, and its POSTs the session's CSRF
// token as well. A browser without a session that asks for a page is sent
// to the login page; a script gets 401.
func (a *authenticator) wrapUI(level access, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		safe := r.Method == http.MethodGet || r.Method == http.MethodHead
		if !safe {
			if !sameOrigin(r) {
				http.Error(w, "cross-origin request refused", http.StatusForbidden)
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
		}
		s, signedIn := a.session(r)
		if signedIn {
			r = r.WithContext(context.WithValue(r.Context(), sessionCtxKey{}, s))
		}
		switch {
		case level == open, level == read && (signedIn || a.publicRead):
		case signedIn && !s.who.Role.Allows(level.role()):
			http.Error(w, fmt.Sprintf("you signed in with token %q, whose %s role may not do this: it needs the %s role", s.who.Name, s.who.Role, level.role()), http.StatusForbidden)
			return
		case signedIn && (safe || a.validCSRF(r, s)):
		case signedIn:
			http.Error(w, "this form is missing its CSRF token or holds a stale one: reload the page and try again", http.StatusForbidden)
			return
		case safe && strings.Contains(r.Header.Get("Accept"), "text/html"):
			http.Redirect(w, r, "/ui/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		default:
			http.Error(w, "sign in first", http.StatusUnauthorized)
			return
		}
		h(w, r)
	}
}

// bearer returns the token of the request's Authorization header.
func bearer(r *http.Request) (string, bool) {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// apiToken returns the configured token, or else the one in
// data_dir/api-token, which it generates (32 random bytes, hex, mode 0600)
// when it does not exist yet. The file is refused when group or others may
// read or write it. source says where the token comes from, for the log;
// the token itself is never logged.
func apiToken(cfg config.Server) (token, source string, generated bool, err error) {
	if cfg.API.Token != "" {
		return cfg.API.Token, "the configuration (server.api.token)", false, nil
	}
	path := filepath.Join(cfg.DataDir, TokenFileName)
	token, err = readTokenFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		token, err = generateTokenFile(path)
		if errors.Is(err, fs.ErrExist) { // another server won the race
			token, err = readTokenFile(path)
		} else if err == nil {
			return token, path, true, nil
		}
	}
	if err != nil {
		return "", "", false, err
	}
	return token, path, false, nil
}

// readTokenFile reads a token file only its owner may read.
func readTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("API token: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("API token: %w", err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("API token: %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("API token: %s has mode %04o: group or others may access it; make it readable by its owner only (chmod 600 %s)", path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", fmt.Errorf("API token: read %s: %w", path, err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < config.MinAPITokenLength || strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("API token: %s must hold one token of at least %d characters (delete it to have a new one generated)", path, config.MinAPITokenLength)
	}
	return tok, nil
}

// generateTokenFile writes a new random token to path, which must not
// exist. It writes aside and links into place: a crash never leaves a
// partial token, and a token created meanwhile by someone else wins
// (fs.ErrExist).
func generateTokenFile(path string) (string, error) {
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("API token: %w", err)
	}
	tok := hex.EncodeToString(raw[:])
	tmp, err := os.CreateTemp(filepath.Dir(path), ".api-token-*")
	if err != nil {
		return "", fmt.Errorf("API token: %w", err)
	}
	defer os.Remove(tmp.Name())
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.WriteString(tok + "\n")
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("API token: write %s: %w", tmp.Name(), err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("API token: create %s: %w", path, err)
	}
	return tok, nil
}
