package server

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/conveyor-ci/conveyor/core/builds"
	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/session"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/core/version"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// uiFiles are the web UI's templates and static assets, built into the
// binary.
//
//go:embed ui/templates/*.html ui/static/*
var uiFiles embed.FS

// uiPages are the UI's pages, each parsed with the layout and partials.
var uiPages = parsePages()

// uiCSP keeps every script, style and request of a UI page on this
// server: no inline script runs, whatever a page were made to hold.
const uiCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// historyLimit is how many builds the job page shows by default.
const historyLimit = 30

func parsePages() map[string]*template.Template {
	pages := map[string]*template.Template{}
	names, err := fs.Glob(uiFiles, "ui/templates/*.html")
	if err != nil {
		panic(err)
	}
	for _, name := range names {
		base := strings.TrimPrefix(name, "ui/templates/")
		if base == "layout.html" || base == "partials.html" {
			continue
		}
		pages[strings.TrimSuffix(base, ".html")] = template.Must(template.New(base).Funcs(uiFuncs).
			ParseFS(uiFiles, "ui/templates/layout.html", "ui/templates/partials.html", name))
	}
	return pages
}

// uiPage is what every page's layout needs, with the page's own data.
type uiPage struct {
	Title string
	// Nav is the menu entry to highlight.
	Nav string
	// SignedIn: the browser holds a session; CSRF is its token for forms.
	SignedIn bool
	CSRF     string
	// TokenName and Role are the session's token; CanTrigger and IsAdmin
	// say what its role allows, to show only the actions it may take.
	TokenName  string
	Role       store.Role
	CanTrigger bool
	IsAdmin    bool
	// PublicRead: pages show without signing in.
	PublicRead bool
	Server     string
	Version    string
	Data       any
}

// render writes page name with data, or a 500 when it fails to render.
func (s *Server) render(w http.ResponseWriter, r *http.Request, code int, name, title, nav string, data any) {
	t := uiPages[name]
	p := uiPage{Title: title, Nav: nav, PublicRead: s.auth.publicRead, Server: s.config().Server.Name,
		Version: version.Version, Data: data}
	if sess, ok := sessionOf(r.Context()); ok {
		p.SignedIn, p.CSRF = true, s.auth.csrf(sess)
		p.TokenName, p.Role = sess.who.Name, sess.who.Role
		p.CanTrigger, p.IsAdmin = sess.who.Role.Allows(store.RoleTrigger), sess.who.Role.Allows(store.RoleAdmin)
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", p); err != nil {
		s.logger.Error("rendering a UI page", "page", name, "error", err)
		http.Error(w, "the page failed to render", http.StatusInternalServerError)
		return
	}
	uiHeaders(w)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// uiHeaders are the security headers of every UI response.
func uiHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", uiCSP)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	// Pages hold CSRF tokens and, for a signed-in browser, what the
	// public may not see: no cache keeps them.
	h.Set("Cache-Control", "no-store")
}

// handleUI registers a web UI handler for pattern, guarded as level
// requires (see authenticator.wrapUI).
func (rt router) handleUI(pattern string, level access, h http.HandlerFunc) {
	rt.mux.HandleFunc(pattern, rt.auth.wrapUI(level, h))
}

// signOutsFile, under data_dir, keeps the UI sessions signed out before
// they expire.
const signOutsFile = "ui-signed-out"

// uiRoutes registers the web UI under /ui/, and has the sessions signed
// out before a restart stay so.
func (s *Server) uiRoutes(rt router) {
	if err := rt.auth.keepSignOuts(filepath.Join(s.config().Server.DataDir, signOutsFile)); err != nil {
		s.logger.Warn("UI sessions signed out before this start cannot be told apart: they stay valid until they expire", "error", err)
	}
	static, err := fs.Sub(uiFiles, "ui/static")
	if err != nil {
		panic(err)
	}
	files := http.StripPrefix("/ui/static/", http.FileServerFS(static))
	rt.handleUI("GET /ui/static/", open, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Cache-Control", "public, max-age=3600")
		files.ServeHTTP(w, r)
	})
	home := func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ui/nodes", http.StatusSeeOther) }
	rt.handleUI("GET /{$}", open, home)
	rt.handleUI("GET /ui/{$}", open, home)
	rt.handleUI("GET /ui/login", open, s.uiLogin)
	rt.handleUI("POST /ui/login", open, s.uiLogin)
	rt.handleUI("POST /ui/logout", signedIn, s.uiLogout)
	rt.handleUI("GET /ui/nodes", read, s.uiNodes)
	s.uiNodeRoutes(rt)
	rt.handleUI("GET /ui/nodes/{node}/secret", admin, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		s.handleSecret(w, r)
	})
	rt.handleUI("GET /ui/builds", read, s.uiBuilds)
	rt.handleUI("GET /ui/jobs", read, s.uiJobs)
	rt.handleUI("GET /ui/jobs/{job}", read, s.uiJob)
	rt.handleUI("POST /ui/jobs/{job}/builds", trigger, s.uiTrigger)
	rt.handleUI("GET /ui/jobs/{job}/builds/{n}", read, s.withBuild(s.uiBuild))
	rt.handleUI("POST /ui/jobs/{job}/builds/{n}/cancel", trigger, s.withBuild(s.uiCancel))
	rt.handleUI("GET /ui/jobs/{job}/builds/{n}/log", read, s.withBuild(s.handleLog))
	rt.handleUI("GET /ui/jobs/{job}/builds/{n}/artifacts/{path...}", read, s.withBuild(s.handleArtifact))
	rt.handleUI("GET /ui/transport", read, s.uiTransport)
	rt.handleUI("GET /ui/", open, func(w http.ResponseWriter, r *http.Request) {
		s.uiError(w, r, http.StatusNotFound, "There is no page "+r.URL.Path+".")
	})
}

// uiError shows an error page.
func (s *Server) uiError(w http.ResponseWriter, r *http.Request, code int, msg string) {
	s.render(w, r, code, "error", http.StatusText(code), "", msg)
}

// uiServiceError shows a builds service error as its API status would.
func (s *Server) uiServiceError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, builds.ErrUnknownJob) || errors.Is(err, store.ErrNotFound) {
		s.uiError(w, r, http.StatusNotFound, err.Error())
		return
	}
	s.logger.Error("UI request failed", "path", r.URL.Path, "error", err)
	s.uiError(w, r, http.StatusInternalServerError, err.Error())
}

// loginData is the login page's.
type loginData struct {
	Next  string
	Error string
}

// uiLogin shows the login form and, on POST, checks the API token the
// operator pasted: the browser gets a session cookie, never the token.
func (s *Server) uiLogin(w http.ResponseWriter, r *http.Request) {
	next := localPath(r.FormValue("next"))
	if r.Method == http.MethodGet {
		if _, ok := s.auth.session(r); ok {
			http.Redirect(w, r, next, http.StatusSeeOther)
			return
		}
		s.render(w, r, http.StatusOK, "login", "Sign in", "", loginData{Next: next})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	key := clientKey(r)
	if d := s.auth.limiter.wait(key); d > 0 {
		s.auth.failed("ui", "rate_limited")
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter(d)))
		s.render(w, r, http.StatusTooManyRequests, "login", "Sign in", "", loginData{Next: next,
			Error: fmt.Sprintf("Too many wrong tokens from your address: wait %d seconds and try again.", retryAfter(d))})
		return
	}
	who, ok := s.auth.identify(strings.TrimSpace(r.PostFormValue("token")))
	if !ok {
		s.auth.limiter.fail(key)
		s.auth.failed("ui", "invalid_token")
		s.logger.Warn("UI sign-in refused: wrong API token", "remote", r.RemoteAddr)
		s.render(w, r, http.StatusUnauthorized, "login", "Sign in", "", loginData{Next: next, Error: "That is not an API token of this server."})
		return
	}
	sess, value := s.auth.newSession(who)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: value, Path: cookiePath, Expires: sess.expires,
		MaxAge: int(sessionTTL / time.Second), HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: secureRequest(r)})
	s.logger.Info("UI signed in", "token", who.Name, "role", who.Role, "remote", r.RemoteAddr)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// uiLogout ends the browser's session.
func (s *Server) uiLogout(w http.ResponseWriter, r *http.Request) {
	if sess, ok := sessionOf(r.Context()); ok {
		if err := s.auth.revoke(sess); err != nil {
			s.logger.Error("UI sign-out: the session ends now but would come back after a restart", "error", err)
		}
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: cookiePath, MaxAge: -1, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: secureRequest(r)})
	to := "/ui/login"
	if s.auth.publicRead {
		to = "/ui/nodes"
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// cookiePath limits the session cookie to the UI: the API never sees it.
const cookiePath = "/ui/"

// secureRequest reports whether the browser reached the server over
// HTTPS (directly or through a proxy saying so), so the cookie is only
// ever sent back over HTTPS.
func secureRequest(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

// localPath is p when it is a path of the UI, else the nodes page: a
// login link cannot send the browser to another site.
func localPath(p string) string {
	u, err := url.Parse(p)
	if err != nil || u.Scheme != "" || u.Host != "" || !strings.HasPrefix(u.Path, "/ui/") ||
		strings.HasPrefix(p, "//") || strings.Contains(p, `\`) || strings.HasPrefix(u.Path, "/ui/login") {
		return "/ui/nodes"
	}
	return p
}

// nodeView is a node on the nodes page.
type nodeView struct {
	nodes.Status
	// Connect: the node's launcher hands out agent secrets, so a signed-in
	// user may fetch the agent's connect command.
	Connect bool
}

// nodesData is the nodes page's.
type nodesData struct {
	Nodes      []nodeView
	Busy       int
	Executors  int
	Online     int
	Queued     int
	InProgress []*store.Build
	// Reload is the last configuration reload's outcome, nil before one.
	Reload *ReloadResult
}

func (s *Server) uiNodes(w http.ResponseWriter, r *http.Request) {
	var d nodesData
	for _, n := range s.nodes.Nodes() {
		st := n.Status()
		v := nodeView{Status: st}
		if p := s.plugins.Get(st.Launcher); p != nil && p.Process().Secrets != nil {
			v.Connect = true
		}
		d.Nodes = append(d.Nodes, v)
		d.Busy += st.Busy
		d.Executors += st.Executors
		if st.State == nodes.StateOnline {
			d.Online++
		}
	}
	d.InProgress = s.inProgress()
	d.Queued = s.builds.Queued()
	d.Reload = s.LastReload()
	s.render(w, r, http.StatusOK, "nodes", "Nodes", "nodes", d)
}

// scanDepth is how many of each job's newest builds are searched for
// unfinished ones.
const scanDepth = 100

// inProgress lists the running builds, then the queued ones, oldest
// first.
func (s *Server) inProgress() []*store.Build {
	var out []*store.Build
	for _, j := range s.config().Jobs {
		list, err := s.builds.List(j.Name, scanDepth)
		if err != nil {
			s.logger.Error("listing builds", "job", j.Name, "error", err)
			continue
		}
		for _, b := range list {
			if !store.Finished(b.Status) {
				out = append(out, b)
			}
		}
	}
	sort.SliceStable(out, func(i, k int) bool {
		if ri, rk := out[i].Status == store.StatusRunning, out[k].Status == store.StatusRunning; ri != rk {
			return ri
		}
		return out[i].QueuedAt.Before(out[k].QueuedAt)
	})
	return out
}

// buildsData is the builds page's.
type buildsData struct {
	InProgress []*store.Build
	Recent     []*store.Build
}

// recentLimit is how many finished builds the builds page shows.
const recentLimit = 50

func (s *Server) uiBuilds(w http.ResponseWriter, r *http.Request) {
	d := buildsData{InProgress: s.inProgress()}
	for _, j := range s.config().Jobs {
		list, err := s.builds.List(j.Name, recentLimit)
		if err != nil {
			s.uiServiceError(w, r, err)
			return
		}
		for _, b := range list {
			if store.Finished(b.Status) {
				d.Recent = append(d.Recent, b)
			}
		}
	}
	sort.SliceStable(d.Recent, func(i, k int) bool { return finishedAt(d.Recent[i]).After(finishedAt(d.Recent[k])) })
	if len(d.Recent) > recentLimit {
		d.Recent = d.Recent[:recentLimit]
	}
	s.render(w, r, http.StatusOK, "builds", "Builds", "builds", d)
}

func finishedAt(b *store.Build) time.Time {
	if b.FinishedAt != nil {
		return *b.FinishedAt
	}
	return b.QueuedAt
}

// jobView is a job on the jobs page.
type jobView struct {
	Name      string
	Labels    []string
	Steps     []string
	Timeout   time.Duration
	LastBuild *store.Build
	// Active counts its running and queued builds.
	Active int
	// Params counts its declared parameters; Required: some have no
	// default, so the job cannot be built without the form.
	Params   int
	Required bool
}

func (s *Server) jobView(j *config.Job, recent []*store.Build) jobView {
	v := jobView{Name: j.Name, Labels: j.Labels, Timeout: j.Timeout, Params: len(j.Params)}
	for _, p := range j.Params {
		v.Required = v.Required || p.Default == nil
	}
	for _, st := range j.Steps {
		v.Steps = append(v.Steps, st.Name)
	}
	if len(recent) > 0 {
		v.LastBuild = recent[0]
	}
	for _, b := range recent {
		if !store.Finished(b.Status) {
			v.Active++
		}
	}
	return v
}

func (s *Server) uiJobs(w http.ResponseWriter, r *http.Request) {
	var jobs []jobView
	for _, j := range s.config().Jobs {
		recent, err := s.builds.List(j.Name, scanDepth)
		if err != nil {
			s.uiServiceError(w, r, err)
			return
		}
		jobs = append(jobs, s.jobView(j, recent))
	}
	s.render(w, r, http.StatusOK, "jobs", "Jobs", "jobs", jobs)
}

// param is a parameter and its value, as a build carries it.
type param struct{ Key, Value string }

// paramField is one declared parameter on the trigger form.
type paramField struct {
	Name, Description string
	// Default is the declared default ("" and HasDefault false: required).
	Default    string
	HasDefault bool
	Choices    []string
	// Value is what the field holds: the value given (a refused form, a
	// rebuild), else the default.
	Value string
}

// jobData is the job page's.
type jobData struct {
	Job    jobView
	Builds []*store.Build
	// More: older builds exist beyond Builds; MoreLimit shows them.
	More      bool
	MoreLimit int
	// Params are the trigger form's fields, one per declared parameter;
	// Error says why a trigger was refused.
	Params []paramField
	Error  string
}

// uiJob shows a job, its trigger form and its history; ?from=N fills
// the form with build N's parameters.
func (s *Server) uiJob(w http.ResponseWriter, r *http.Request) {
	var given map[string]string
	if from, err := strconv.Atoi(r.URL.Query().Get("from")); err == nil && from > 0 {
		if b, err := s.builds.Get(r.PathValue("job"), from); err == nil {
			given = b.Params
		}
	}
	s.renderJob(w, r, http.StatusOK, given, "")
}

// renderJob shows the job page, its form filled with the given values.
func (s *Server) renderJob(w http.ResponseWriter, r *http.Request, code int, given map[string]string, msg string) {
	j := s.config().Job(r.PathValue("job"))
	if j == nil {
		s.uiError(w, r, http.StatusNotFound, "no such job: "+r.PathValue("job"))
		return
	}
	limit := historyLimit
	if l, err := strconv.Atoi(r.URL.Query().Get("limit")); err == nil && l > 0 {
		limit = min(l, 1000)
	}
	list, err := s.builds.List(j.Name, limit+1)
	if err != nil {
		s.uiServiceError(w, r, err)
		return
	}
	d := jobData{Job: s.jobView(j, list), Error: msg}
	if len(list) > limit {
		d.More, d.MoreLimit, list = true, limit*4, list[:limit]
	}
	d.Builds = list
	for _, p := range j.Params {
		f := paramField{Name: p.Name, Description: p.Description, Choices: p.Choices}
		if p.Default != nil {
			f.Default, f.HasDefault, f.Value = *p.Default, true, *p.Default
		}
		if v, ok := given[p.Name]; ok {
			f.Value = v
		}
		d.Params = append(d.Params, f)
	}
	s.render(w, r, code, "job", j.Name, "jobs", d)
}

func sortedParams(m map[string]string) []param {
	out := make([]param, 0, len(m))
	for k, v := range m {
		out = append(out, param{k, v})
	}
	sort.Slice(out, func(i, k int) bool { return out[i].Key < out[k].Key })
	return out
}

// uiTrigger queues a build with the form's parameters and sends the
// browser to it. The job's declarations decide what is accepted (see
// config.Job.ResolveParams): a refused form comes back with its values
// and the reasons.
func (s *Server) uiTrigger(w http.ResponseWriter, r *http.Request) {
	job := r.PathValue("job")
	keys, values := r.PostForm["key"], r.PostForm["value"]
	params := map[string]string{}
	var problems []string
	for i, k := range keys {
		k = strings.TrimSpace(k)
		v := ""
		if i < len(values) {
			v = values[i]
		}
		if k == "" && v == "" {
			continue
		}
		if _, dup := params[k]; dup {
			problems = append(problems, fmt.Sprintf("parameter %s is given twice", k))
			continue
		}
		params[k] = v
	}
	if len(problems) > 0 {
		s.renderJob(w, r, http.StatusBadRequest, params, strings.Join(problems, "; "))
		return
	}
	b, err := s.builds.Trigger(job, params)
	var pe *config.ParamError
	if errors.As(err, &pe) {
		s.renderJob(w, r, http.StatusBadRequest, params, strings.Join(pe.Problems, "; "))
		return
	}
	if err != nil {
		s.uiServiceError(w, r, err)
		return
	}
	s.logger.Info("build triggered from the web UI", "build", builds.Key(job, b.Number), "remote", r.RemoteAddr)
	http.Redirect(w, r, buildPath(job, b.Number), http.StatusSeeOther)
}

func buildPath(job string, n int) string {
	return "/ui/jobs/" + url.PathEscape(job) + "/builds/" + strconv.Itoa(n)
}

// artifactPath is the download link of a build's artifact.
func artifactPath(job string, n int, p string) string {
	parts := strings.Split(p, "/")
	for i := range parts {
		parts[i] = url.PathEscape(parts[i])
	}
	return buildPath(job, n) + "/artifacts/" + strings.Join(parts, "/")
}

// stepView is one step on the build page: run, running, or still to come.
type stepView struct {
	Name     string
	Status   string
	ExitCode *int
	Error    string
	Started  *time.Time
	Finished *time.Time
	// Output links to the step's part of the raw log ("" before it ran).
	Output string
}

// logTail is how much of a long finished log the build page shows,
// unless asked for the whole (?full=1): the end is what one looks for.
const logTail = 4 << 20

// buildData is the build page's.
type buildData struct {
	Build    *store.Build
	Params   []param
	Steps    []stepView
	Finished bool
	// LogFrom is the byte offset the log view starts at, LogShown how
	// much it shows from there of a finished build.
	LogFrom, LogShown int64
	// Prev and Next are the job's builds before and after (0: none).
	Prev, Next int
	// Labels and Candidates say, for a queued build, what it waits for:
	// the job's labels and the nodes that carry them.
	Labels     []string
	Candidates []nodes.Status
}

func (s *Server) uiBuild(w http.ResponseWriter, r *http.Request, job string, n int) {
	b, err := s.builds.Get(job, n)
	if err != nil {
		s.uiServiceError(w, r, err)
		return
	}
	d := buildData{Build: b, Params: sortedParams(b.Params), Finished: store.Finished(b.Status)}
	if n > 1 {
		d.Prev = n - 1
	}
	if _, err := s.builds.Get(job, n+1); err == nil {
		d.Next = n + 1
	}
	if d.Finished && b.LogSize > logTail && r.URL.Query().Get("full") == "" {
		d.LogFrom, d.LogShown = b.LogSize-logTail, logTail
	}
	for _, st := range b.Steps {
		v := stepView{Name: st.Name, Status: st.Status, ExitCode: st.ExitCode, Error: st.Error, Finished: st.FinishedAt,
			Output: buildPath(job, n) + "/log?offset=" + strconv.FormatInt(st.LogOffset, 10)}
		started := st.StartedAt
		v.Started = &started
		d.Steps = append(d.Steps, v)
	}
	// The steps not run yet: pending while the build goes on, skipped
	// once it ended.
	if j := s.config().Job(job); j != nil {
		if b.Status == store.StatusQueued {
			d.Labels = j.Labels
			for _, nd := range s.nodes.Nodes() {
				if nd.Covers(j.Labels) {
					d.Candidates = append(d.Candidates, nd.Status())
				}
			}
		}
		rest := "pending"
		if d.Finished {
			rest = "skipped"
		}
		for i := len(b.Steps); i < len(j.Steps); i++ {
			d.Steps = append(d.Steps, stepView{Name: j.Steps[i].Name, Status: rest})
		}
	}
	s.render(w, r, http.StatusOK, "build", fmt.Sprintf("%s #%d", job, n), "jobs", d)
}

// uiCancel cancels a queued or running build.
func (s *Server) uiCancel(w http.ResponseWriter, r *http.Request, job string, n int) {
	_, err := s.builds.Cancel(job, n, "by request through the web UI")
	if err != nil && !errors.Is(err, builds.ErrFinished) {
		s.uiServiceError(w, r, err)
		return
	}
	s.logger.Info("build cancelled from the web UI", "build", builds.Key(job, n), "remote", r.RemoteAddr)
	http.Redirect(w, r, buildPath(job, n), http.StatusSeeOther)
}

// transportView is one node on the transport page.
type transportView struct {
	nodes.Transport
	Dropped *session.Counters
}

func (s *Server) uiTransport(w http.ResponseWriter, r *http.Request) {
	list := s.nodes.Nodes()
	out := make([]transportView, len(list))
	var wg sync.WaitGroup
	for i, n := range list {
		wg.Go(func() {
			out[i] = transportView{Transport: s.nodes.Transport(r.Context(), n), Dropped: n.Status().Dropped}
		})
	}
	wg.Wait()
	s.render(w, r, http.StatusOK, "transport", "Transport", "transport", out)
}

// uiFuncs are the templates' helpers.
var uiFuncs = template.FuncMap{
	"stamp":        stamp,
	"ago":          ago,
	"elapsed":      elapsed,
	"age":          func(t time.Time) string { return humanDuration(time.Since(t)) },
	"duration":     humanDuration,
	"bytes":        humanBytes,
	"size":         func(n int64) string { return humanBytes(uint64(max(n, 0))) },
	"join":         strings.Join,
	"finished":     store.Finished,
	"buildPath":    buildPath,
	"artifactPath": artifactPath,
	"jobPath":      func(job string) string { return "/ui/jobs/" + url.PathEscape(job) },
	"direction": func(d string) string {
		switch d {
		case launcher.ToAgent:
			return "master → agent"
		case launcher.ToMaster:
			return "agent → master"
		}
		return d
	},
	"lag": func(l int64) string {
		if l < 0 {
			return "unknown"
		}
		return strconv.FormatInt(l, 10)
	},
	"rtt": func(d time.Duration) string {
		if d <= 0 {
			return "—"
		}
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	},
	"exitCode": func(c *int) string {
		if c == nil {
			return "—"
		}
		return strconv.Itoa(*c)
	},
}

// when is a time.Time or a *time.Time (nil, zero: none).
func when(t any) (time.Time, bool) {
	switch v := t.(type) {
	case time.Time:
		return v, !v.IsZero()
	case *time.Time:
		if v != nil {
			return *v, !v.IsZero()
		}
	}
	return time.Time{}, false
}

// stamp is t in UTC to the second, "—" for none.
func stamp(t any) string {
	v, ok := when(t)
	if !ok {
		return "—"
	}
	return v.UTC().Format("2006-01-02 15:04:05 UTC")
}

// ago is how long ago t was, "—" for none.
func ago(t any) string {
	v, ok := when(t)
	if !ok {
		return "—"
	}
	d := time.Since(v)
	if d < time.Second {
		return "just now"
	}
	return humanDuration(d) + " ago"
}

// elapsed is the time from start to end, or to now while end is none;
// "—" before start.
func elapsed(start, end any) string {
	from, ok := when(start)
	if !ok {
		return "—"
	}
	to, ok := when(end)
	if !ok {
		to = time.Now()
	}
	return humanDuration(to.Sub(from))
}

// humanDuration rounds d for people: 36ms, 2.4s, 12s, 3m 05s, 2h 10m,
// 3d 4h.
func humanDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return fmt.Sprintf("%dms", max(d, 0).Milliseconds())
	case d < 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm %02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh %02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd %dh", int(d.Hours())/24, int(d.Hours())%24)
}

// humanBytes is n in B, KiB, MiB or GiB.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 3; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGT"[exp])
}
