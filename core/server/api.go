package server

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"path"
	"regexp"
	"strconv"
	"time"

	"github.com/conveyor-ci/conveyor/core/builds"
	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// JobStatus is a job in the API.
type JobStatus struct {
	Name      string        `json:"name"`
	Labels    []string      `json:"labels"`
	Timeout   string        `json:"timeout,omitempty"`
	Params    []ParamStatus `json:"params,omitempty"`
	Steps     []string      `json:"steps"`
	LastBuild *store.Build  `json:"last_build,omitempty"`
}

// ParamStatus is a job's declared parameter in the API.
type ParamStatus struct {
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Default     *string  `json:"default,omitempty"`
	Choices     []string `json:"choices,omitempty"`
	// Required: it has no default, a trigger must set it.
	Required bool `json:"required"`
}

// TriggerRequest is the body of POST /v1/jobs/{job}/builds.
type TriggerRequest struct {
	Params map[string]string `json:"params,omitempty"`
}

// SecretResponse is the body of GET /v1/nodes/{node}/secret.
type SecretResponse struct {
	Node         string   `json:"node"`
	Secret       string   `json:"secret"`
	AgentCommand []string `json:"agent_command"`
}

func (s *Server) apiRoutes(rt router) {
	rt.handle("GET /v1/nodes", read, func(w http.ResponseWriter, r *http.Request) {
		out := []nodes.Status{}
		for _, n := range s.nodes.Nodes() {
			out = append(out, n.Status())
		}
		writeJSON(w, http.StatusOK, out)
	})
	rt.handle("GET /v1/nodes/{node}", read, s.withNode(func(w http.ResponseWriter, r *http.Request, n *nodes.Node) {
		hist, err := s.nodes.History(n)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, NodeDetail{Status: n.Status(), History: hist})
	}))
	s.nodeControlRoutes(rt)
	rt.handle("GET /v1/nodes/{node}/secret", admin, s.handleSecret)
	rt.handle("DELETE /v1/nodes/{node}", admin, s.handleDeleteNode)
	rt.handle("GET /v1/jobs", read, func(w http.ResponseWriter, r *http.Request) {
		out := []JobStatus{}
		for _, j := range s.config().Jobs {
			js := JobStatus{Name: j.Name, Labels: j.Labels, Steps: []string{}}
			if j.Timeout > 0 {
				js.Timeout = j.Timeout.String()
			}
			for _, st := range j.Steps {
				js.Steps = append(js.Steps, st.Name)
			}
			for _, p := range j.Params {
				js.Params = append(js.Params, ParamStatus{Name: p.Name, Description: p.Description, Default: p.Default,
					Choices: p.Choices, Required: p.Default == nil})
			}
			if last, err := s.builds.List(j.Name, 1); err == nil && len(last) > 0 {
				js.LastBuild = last[0]
			}
			out = append(out, js)
		}
		writeJSON(w, http.StatusOK, out)
	})
	rt.handle("POST /v1/jobs/{job}/builds", trigger, func(w http.ResponseWriter, r *http.Request) {
		var req TriggerRequest
		if r.ContentLength != 0 {
			if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
				writeError(w, http.StatusBadRequest, "invalid request body: "+err.Error())
				return
			}
		}
		b, err := s.builds.Trigger(r.PathValue("job"), req.Params)
		if err != nil {
			writeServiceError(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, b)
	})
	rt.handle("GET /v1/jobs/{job}/builds", read, func(w http.ResponseWriter, r *http.Request) {
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		list, err := s.builds.List(r.PathValue("job"), limit)
		if err != nil {
			writeServiceError(w, err)
			return
		}
		if list == nil {
			list = []*store.Build{}
		}
		writeJSON(w, http.StatusOK, list)
	})
	rt.handle("GET /v1/jobs/{job}/builds/{n}", read, s.withBuild(func(w http.ResponseWriter, r *http.Request, job string, n int) {
		b, err := s.builds.Get(job, n)
		if err != nil {
			writeServiceError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, b)
	}))
	rt.handle("POST /v1/jobs/{job}/builds/{n}/cancel", trigger, s.withBuild(func(w http.ResponseWriter, r *http.Request, job string, n int) {
		reason := r.URL.Query().Get("reason")
		if reason == "" {
			reason = "by request through the API"
		}
		b, err := s.builds.Cancel(job, n, reason)
		if errors.Is(err, builds.ErrFinished) {
			writeJSON(w, http.StatusConflict, b)
			return
		}
		if err != nil {
			writeServiceError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, b)
	}))
	rt.handle("GET /v1/jobs/{job}/builds/{n}/log", read, s.withBuild(s.handleLog))
	rt.handle("GET /v1/jobs/{job}/builds/{n}/artifacts", read, s.withBuild(func(w http.ResponseWriter, r *http.Request, job string, n int) {
		list, err := s.builds.Artifacts(job, n)
		if err != nil {
			writeServiceError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, list)
	}))
	rt.handle("GET /v1/jobs/{job}/builds/{n}/artifacts/{path...}", read, s.withBuild(s.handleArtifact))
}

// handleArtifact serves one archived file as a download: only a path the
// build recorded, read from the build's artifacts directory and nowhere
// else, with Range requests, its sha256 as ETag and in Repr-Digest.
func (s *Server) handleArtifact(w http.ResponseWriter, r *http.Request, job string, n int) {
	p := r.PathValue("path")
	if err := store.CheckArtifactPath(p); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	art, f, err := s.builds.OpenArtifact(job, n, p)
	if err != nil {
		writeServiceError(w, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("X-Content-Type-Options", "nosniff")
	disposition := mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(art.Path)})
	if disposition == "" { // a name mime cannot encode
		disposition = "attachment"
	}
	h.Set("Content-Disposition", disposition)
	h.Set("ETag", `"`+art.SHA256+`"`)
	if sum, err := hex.DecodeString(art.SHA256); err == nil {
		h.Set("Repr-Digest", "sha-256=:"+base64.StdEncoding.EncodeToString(sum)+":")
	}
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // large files take their time
	http.ServeContent(w, r, "", fi.ModTime(), f)
}

// withBuild parses the build number of the path.
func (s *Server) withBuild(h func(http.ResponseWriter, *http.Request, string, int)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.PathValue("n"))
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, "build number must be a positive integer")
			return
		}
		h(w, r, r.PathValue("job"), n)
	}
}

// handleLog serves a build's log from ?offset=N (default 0); with
// ?follow=true it streams until the build ends.
func (s *Server) handleLog(w http.ResponseWriter, r *http.Request, job string, n int) {
	var offset int64
	if o := r.URL.Query().Get("offset"); o != "" {
		v, err := strconv.ParseInt(o, 10, 64)
		if err != nil || v < 0 {
			writeError(w, http.StatusBadRequest, "offset must be a non-negative integer")
			return
		}
		offset = v
	}
	if _, err := s.builds.Get(job, n); err != nil {
		writeServiceError(w, err)
		return
	}
	follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	rc := http.NewResponseController(w)
	flush := func() { _ = rc.Flush() }
	ctx := r.Context()
	_ = rc.SetWriteDeadline(time.Time{})
	if err := s.builds.Follow(ctx, job, n, offset, follow, w, flush); err != nil && ctx.Err() == nil {
		s.logger.Warn("log stream ended", "build", builds.Key(job, n), "error", err)
	}
}

func (s *Server) handleSecret(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("node")
	n := s.config().Node(name)
	if n == nil {
		writeError(w, http.StatusNotFound, "no such node: "+name)
		return
	}
	p := s.plugins.Get(n.Launcher)
	if p == nil || p.Process().Secrets == nil {
		writeError(w, http.StatusNotFound, "launcher "+n.Launcher+" of node "+name+" has no secret manager: its agents need no secret")
		return
	}
	sec, err := p.Process().Secrets.NodeSecret(r.Context(), name)
	if err != nil {
		writeError(w, http.StatusBadGateway, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, SecretResponse{Node: name, Secret: hex.EncodeToString(sec.Secret), AgentCommand: sec.AgentCommand})
}

// DeleteNodeResponse is the body of DELETE /v1/nodes/{node}.
type DeleteNodeResponse struct {
	Node     string `json:"node"`
	Launcher string `json:"launcher"`
	// Purged: the launcher deleted what it kept for the node.
	Purged bool `json:"purged"`
	// Message says what happened, for people.
	Message string `json:"message"`
}

// handleDeleteNode forgets a node that left the configuration and, with
// ?purge=true, has its launcher delete what it kept for it (Kafka: its
// topics). A configured node cannot be deleted: its block must go first,
// so that nothing is lost by a typo on the command line.
func (s *Server) handleDeleteNode(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("node")
	purge, _ := strconv.ParseBool(r.URL.Query().Get("purge"))
	if s.config().Node(name) != nil {
		writeError(w, http.StatusConflict, fmt.Sprintf("node %q is in the configuration: remove its block and reload the configuration (conveyor reload) first", name))
		return
	}
	rec, err := s.store.Node(name)
	if errors.Is(err, store.ErrNodeNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such node: %s (the server never ran it)", name))
		return
	} else if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	resp := DeleteNodeResponse{Node: name, Launcher: rec.Launcher, Message: "node forgotten; its launcher's data was kept (use purge to delete it)"}
	if purge {
		p := s.plugins.Get(rec.Launcher)
		if p == nil {
			writeError(w, http.StatusConflict, fmt.Sprintf("node %q ran on launcher %q, which is not loaded: declare it to purge the node", name, rec.Launcher))
			return
		}
		purger, ok := p.Process().Launcher.(launcher.Purger)
		if !ok {
			writeError(w, http.StatusInternalServerError, "plugin client cannot purge")
			return
		}
		switch err := purger.Purge(r.Context(), name); {
		case errors.Is(err, launcher.ErrNoPurge):
			resp.Message = fmt.Sprintf("node forgotten; launcher %q keeps nothing to purge", rec.Launcher)
		case err != nil:
			writeError(w, http.StatusBadGateway, err.Error())
			return
		default:
			resp.Purged = true
			resp.Message = fmt.Sprintf("node forgotten; launcher %q deleted its data", rec.Launcher)
		}
	}
	if err := s.store.ForgetNode(name); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	s.logger.Info("node deleted", "node", name, "launcher", rec.Launcher, "purged", resp.Purged)
	writeJSON(w, http.StatusOK, resp)
}

func writeServiceError(w http.ResponseWriter, err error) {
	var pe *config.ParamError
	switch {
	case errors.As(err, &pe):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, builds.ErrUnknownJob), errors.Is(err, store.ErrNotFound), errors.Is(err, builds.ErrNoArtifact):
		writeError(w, http.StatusNotFound, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// TokenRequest is the body of POST /v1/tokens.
type TokenRequest struct {
	Name string     `json:"name"`
	Role store.Role `json:"role"`
}

// TokenResponse is the body of POST /v1/tokens: the token itself, shown
// this once (the server keeps only its SHA-256).
type TokenResponse struct {
	store.Token
	// Secret is the token to send as a bearer token.
	Secret string `json:"token"`
}

// tokenNameRE is what a token's name must match.
var tokenNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// tokenRoutes registers the token management routes (admin).
func (s *Server) tokenRoutes(rt router) {
	rt.handle("GET /v1/tokens", admin, func(w http.ResponseWriter, r *http.Request) {
		list, err := s.store.Tokens()
		if err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		out := []store.Token{{ID: BootstrapToken, Name: BootstrapToken, Role: store.RoleAdmin}}
		for _, t := range list {
			t.SHA256 = ""
			out = append(out, t)
		}
		writeJSON(w, http.StatusOK, out)
	})
	rt.handle("POST /v1/tokens", admin, s.handleCreateToken)
	rt.handle("DELETE /v1/tokens/{name}", admin, s.handleRevokeToken)
}

// handleCreateToken issues a new token: 32 random bytes, hex; only its
// SHA-256 is stored.
func (s *Server) handleCreateToken(w http.ResponseWriter, r *http.Request) {
	var req TokenRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid request body: "+err.Error())
		return
	}
	if !tokenNameRE.MatchString(req.Name) || req.Name == BootstrapToken {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%q cannot name a token: use letters, digits, '.', '_' and '-' (at most 63), and not %q", req.Name, BootstrapToken))
		return
	}
	role, err := store.ParseRole(string(req.Role))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var raw [32]byte
	var id [8]byte
	_, _ = rand.Read(raw[:])
	_, _ = rand.Read(id[:])
	tok := hex.EncodeToString(raw[:])
	sum := sha256.Sum256([]byte(tok))
	t := store.Token{ID: hex.EncodeToString(id[:]), Name: req.Name, Role: role, SHA256: hex.EncodeToString(sum[:]), CreatedAt: time.Now().UTC()}
	if err := s.store.CreateToken(t); errors.Is(err, store.ErrTokenExists) {
		writeError(w, http.StatusConflict, fmt.Sprintf("a token named %q exists: revoke it first or pick another name", req.Name))
		return
	} else if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if s.tokensChanged(w, r, "created", t) {
		t.SHA256 = ""
		writeJSON(w, http.StatusCreated, TokenResponse{Token: t, Secret: tok})
	}
}

// handleRevokeToken deletes a token: its API requests and its UI sessions
// are refused from now on.
func (s *Server) handleRevokeToken(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if name == BootstrapToken {
		writeError(w, http.StatusBadRequest, "the bootstrap token is server.api.token or data_dir/"+TokenFileName+": change it there and restart the server")
		return
	}
	t, err := s.store.RevokeToken(name)
	if errors.Is(err, store.ErrTokenNotFound) {
		writeError(w, http.StatusNotFound, "no such token: "+name)
		return
	} else if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if s.tokensChanged(w, r, "revoked", t) {
		t.SHA256 = ""
		writeJSON(w, http.StatusOK, t)
	}
}

// tokensChanged has the authenticator take the store's tokens after t was
// created or revoked (what) and logs who did it. It reports false, having
// answered the request with the error, when the tokens could not be read.
func (s *Server) tokensChanged(w http.ResponseWriter, r *http.Request, what string, t store.Token) bool {
	if err := s.reloadTokens(); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return false
	}
	by, _ := identityOf(r.Context())
	s.logger.Info("API token "+what, "name", t.Name, "role", t.Role, "by", by.Name)
	return true
}

// reloadTokens has the authenticator take the store's tokens.
func (s *Server) reloadTokens() error {
	list, err := s.store.Tokens()
	if err != nil {
		return fmt.Errorf("API tokens: %w", err)
	}
	return s.auth.setTokens(list)
}
