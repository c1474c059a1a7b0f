// Package server runs the Conveyor master: it loads the launcher plugins a
// configuration declares and serves the HTTP API until its context ends.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/core/builds"
	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/core/metrics"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/plugins"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/core/version"
)

// DiagnosticsError is returned by Run when the configuration is invalid.
type DiagnosticsError struct{ Diagnostics error }

// Error implements error.
func (e *DiagnosticsError) Error() string { return e.Diagnostics.Error() }

// Server is a running master.
type Server struct {
	cfg     atomic.Pointer[config.Config] // a reload swaps it; see config
	paths   []string                      // where Reload reads the configuration
	logger  hclog.Logger
	plugins *plugins.Manager
	store   *store.Store
	nodes   *nodes.Manager
	builds  *builds.Service
	metrics *metrics.Metrics
	http    *http.Server
	ln      net.Listener
	auth    *authenticator

	// runCtx is Serve's context: reload operations waiting for running
	// builds end with it.
	runCtx  atomic.Pointer[context.Context]
	reloads reloadState
}

// Options tunes a server beyond its configuration.
type Options struct {
	// Nodes tunes agent sessions (heartbeats).
	Nodes nodes.Options
	// ConfigPaths are the files or directories the configuration was
	// loaded from, which Reload loads again; none disables reloading.
	ConfigPaths []string
}

// New prepares the data directory, starts and configures the plugins and
// binds the HTTP listener. Configuration problems come back as a
// *DiagnosticsError whose Diagnostics is an hcl.Diagnostics.
func New(ctx context.Context, cfg *config.Config, opts Options, logger hclog.Logger) (*Server, error) {
	if err := os.MkdirAll(cfg.Server.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	st, err := store.Open(cfg.Server.DataDir)
	if err != nil {
		return nil, err
	}
	s := &Server{paths: opts.ConfigPaths, logger: logger, store: st, plugins: plugins.NewManager(logger.Named("launcher"))}
	s.cfg.Store(cfg)
	fail := func(err error) (*Server, error) {
		s.plugins.Stop()
		st.Close()
		return nil, err
	}
	token, source, generated, err := apiToken(cfg.Server)
	if err != nil {
		return fail(err)
	}
	s.auth = newAuthenticator(token, cfg.Server.API.PublicRead)
	if err := s.reloadTokens(); err != nil {
		return fail(err)
	}
	if generated {
		logger.Info("generated the bootstrap API token (admin role): clients send it as a bearer token (conveyor: CONVEYOR_TOKEN or -token-file); create narrower ones with conveyor token create", "file", source)
	} else {
		logger.Info("bootstrap API token (admin role) loaded", "from", source)
	}
	if cfg.Server.API.PublicRead {
		logger.Warn("read-only API endpoints are public (server.api.public_read): anyone reaching http_addr may read nodes, jobs, builds and logs")
	}
	if diags := plugins.Load(ctx, cfg, s.plugins, plugins.LoadOptions{Version: version.Version}); diags.HasErrors() {
		return fail(&DiagnosticsError{Diagnostics: diags})
	}
	recs := make([]store.NodeRecord, 0, len(cfg.Nodes))
	for _, n := range cfg.Nodes {
		recs = append(recs, store.NodeRecord{Name: n.Name, Launcher: n.Launcher})
	}
	if err := st.RecordNodes(recs, time.Now()); err != nil {
		return fail(err)
	}
	s.metrics = metrics.New(metrics.Sources{Nodes: s.metricNodes, Queued: func() int { return s.builds.Queued() }, Plugins: s.metricPlugins,
		LinkMalformed: func() map[string]uint64 { return s.nodes.LinkMalformed(context.Background()) }})
	nopts := opts.Nodes
	nopts.Store = st
	nopts.OnWriteError = s.metrics.WriteFailed
	nopts.Control = st
	s.nodes = nodes.NewManager(cfg, s.plugins, nopts, logger.Named("node"))
	s.auth.onFailure = s.metrics.AuthFailure
	s.builds = builds.New(cfg, st, s.nodes, s.metrics, logger.Named("build"))
	if err := s.builds.Recover(); err != nil {
		return fail(err)
	}
	ln, err := net.Listen("tcp", cfg.Server.HTTPAddr)
	if err != nil {
		return fail(fmt.Errorf("listen on http_addr %s: %w", cfg.Server.HTTPAddr, err))
	}
	s.ln = ln
	s.http = &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// config is the configuration in force (the last one reloaded).
func (s *Server) config() *config.Config { return s.cfg.Load() }

// Addr is the address the HTTP API listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Plugins is the server's plugin manager.
func (s *Server) Plugins() *plugins.Manager { return s.plugins }

// Serve serves the HTTP API until ctx ends, then stops the plugins.
func (s *Server) Serve(ctx context.Context) error {
	s.logger.Info("conveyor server started", "name", s.config().Server.Name, "http", "http://"+s.Addr(),
		"data_dir", s.config().Server.DataDir, "version", version.Version)
	s.runCtx.Store(&ctx)
	errc := make(chan error, 1)
	go func() { errc <- s.http.Serve(s.ln) }()
	runCtx, stopRun := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.nodes.Run(runCtx) }()
	go func() { defer wg.Done(); s.builds.Run(runCtx) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = s.http.Shutdown(sctx)
	stopRun()
	s.plugins.Stop() // ends every connection, so running builds end too
	wg.Wait()
	s.store.Close()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// router registers routes with the access each requires, so that no route
// can be added without saying who may use it.
type router struct {
	mux  *http.ServeMux
	auth *authenticator
}

// handle registers h for pattern, guarded as level requires.
func (rt router) handle(pattern string, level access, h http.HandlerFunc) {
	rt.mux.HandleFunc(pattern, rt.auth.wrap(level, h))
}

func (s *Server) routes() http.Handler {
	rt := router{mux: http.NewServeMux(), auth: s.auth}
	rt.handle("GET /healthz", open, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	rt.handle("GET /metrics", read, s.metrics.ServeHTTP)
	rt.handle("GET /v1/plugins", read, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.pluginStatus())
	})
	s.apiRoutes(rt)
	s.reloadRoutes(rt)
	s.tokenRoutes(rt)
	s.uiRoutes(rt)
	return rt.mux
}

// PluginStatus is one plugin in the API.
type PluginStatus struct {
	Name         string   `json:"name"`
	Version      string   `json:"version"`
	Path         string   `json:"path"`
	Protocol     int      `json:"protocol"`
	Pid          int      `json:"pid"`
	Running      bool     `json:"running"`
	Restarts     int      `json:"restarts"`
	Capabilities []string `json:"capabilities"`
	LastError    string   `json:"last_error,omitempty"`
}

func (s *Server) pluginStatus() []PluginStatus {
	var out []PluginStatus
	for _, p := range s.plugins.All() {
		proc := p.Process()
		st := PluginStatus{Name: p.Name, Version: proc.Info.Version, Path: p.Path, Protocol: proc.Protocol,
			Pid: proc.Pid(), Running: !proc.Exited(), Restarts: p.Restarts(), Capabilities: proc.Info.Capabilities}
		if err := p.LastError(); err != nil {
			st.LastError = err.Error()
		}
		out = append(out, st)
	}
	return out
}

// metricNodes lists the nodes for the metrics.
func (s *Server) metricNodes() []metrics.Node {
	all := s.nodes.Nodes()
	out := make([]metrics.Node, len(all))
	for i, n := range all {
		out[i] = n
	}
	return out
}

// metricPlugins lists the plugins for the metrics.
func (s *Server) metricPlugins() []metrics.Plugin {
	var out []metrics.Plugin
	for _, p := range s.plugins.All() {
		out = append(out, metrics.Plugin{Name: p.Name, Restarts: p.Restarts(), Running: !p.Process().Exited()})
	}
	return out
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
