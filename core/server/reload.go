package server

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/core/metrics"
	"github.com/conveyor-ci/conveyor/core/plugins"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/core/version"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// Triggers of a reload (ReloadResult.Trigger).
const (
	ReloadSIGHUP = "sighup"
	ReloadAPI    = "api"
)

// ReloadResult is the outcome of a configuration reload, as the API
// (POST and GET /v1/reload), the UI and the log show it.
type ReloadResult struct {
	// Time is when the reload started.
	Time time.Time `json:"time"`
	// Trigger is what asked for it: "sighup" or "api".
	Trigger string `json:"trigger"`
	// By names the API token that asked for it, if any.
	By string `json:"by,omitempty"`
	// OK says the new configuration was applied; when false nothing
	// changed and Error says why.
	OK bool `json:"ok"`
	// Error holds the diagnostics (FILE:LINE:COL: Error: ...) or the
	// failure that refused the configuration.
	Error string `json:"error,omitempty"`
	// Changes lists what was applied ("job added: deploy").
	Changes []string `json:"changes,omitempty"`
	// Pending lists the changes that wait for running builds to finish
	// (a node relaunch or removal, a launcher restart).
	Pending []string `json:"pending,omitempty"`
	// NeedsRestart lists the settings that changed but only apply when
	// the server restarts (server.http_addr...): not applied.
	NeedsRestart []string `json:"needs_restart,omitempty"`
	// Warnings are problems met while applying (a launcher restart that
	// failed and is retried by its supervision).
	Warnings []string `json:"warnings,omitempty"`
}

// reloadState serialises reloads and keeps the last outcome.
type reloadState struct {
	run  sync.Mutex // one reload at a time
	mu   sync.Mutex
	last *ReloadResult
	// restarts ends, by launcher, a plugin restart waiting for its nodes'
	// builds (see pendingRestart).
	restarts map[string]context.CancelFunc
}

// LastReload is the outcome of the last reload, nil before the first.
func (s *Server) LastReload() *ReloadResult {
	s.reloads.mu.Lock()
	defer s.reloads.mu.Unlock()
	if s.reloads.last == nil {
		return nil
	}
	r := *s.reloads.last
	return &r
}

// Reload loads the configuration again from the server's ConfigPaths and
// applies what changed; see docs/reload.md. The new configuration is
// checked first, the launcher plugins' parts included (in validate-only
// mode): when it is not valid nothing changes and the result's Error says
// why. Jobs change at once (running builds keep their definition); nodes
// are added at once, updated in place (labels, executors, shell), and
// relaunched or removed once their running builds finished (at once with
// force); a launcher block that changed restarts its plugin at once when
// its sessions resume (launcher.CapResume), else once the builds of its
// nodes finished (at once with force). Server settings are reported as
// needing a restart.
func (s *Server) Reload(ctx context.Context, trigger, by string, force bool) *ReloadResult {
	s.reloads.run.Lock()
	defer s.reloads.run.Unlock()
	res := &ReloadResult{Time: time.Now().UTC(), Trigger: trigger, By: by}
	s.reload(ctx, res, force)
	result := metrics.ReloadSuccess
	if !res.OK {
		result = metrics.ReloadFailure
		s.logger.Error("configuration reload refused: nothing changed", "trigger", trigger, "error", res.Error)
	} else {
		s.logger.Info("configuration reloaded", "trigger", trigger, "changes", res.Changes, "pending", res.Pending,
			"needs_restart", res.NeedsRestart, "warnings", res.Warnings)
	}
	s.metrics.Reloaded(result)
	s.reloads.mu.Lock()
	s.reloads.last = res
	s.reloads.mu.Unlock()
	r := *res
	return &r
}

// diagText prints diagnostics as the command line does.
func diagText(files map[string]*hcl.File, diags hcl.Diagnostics) string {
	var errs hcl.Diagnostics
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			errs = append(errs, d)
		}
	}
	var buf bytes.Buffer
	_ = config.WriteDiagnostics(&buf, files, errs)
	return strings.TrimSpace(buf.String())
}

func (s *Server) reload(ctx context.Context, res *ReloadResult, force bool) {
	if len(s.paths) == 0 {
		res.Error = "the server was started without a configuration path to reload"
		return
	}
	old := s.config()
	cfg, diags := config.LoadContext(ctx, s.paths...)
	if diags.HasErrors() {
		res.Error = diagText(cfg.Files, diags)
		return
	}
	// Server settings apply at the next start only: the new configuration
	// keeps the running ones (plugin_dir and data_dir included, which the
	// plugins below are checked and configured with).
	res.NeedsRestart = config.ServerChanges(old.Server, cfg.Server)
	cfg.Server = old.Server

	check := plugins.NewManager(s.logger.Named("reload-check"))
	diags = plugins.Load(ctx, cfg, check, plugins.LoadOptions{Version: version.Version, ValidateOnly: true})
	check.Stop()
	if diags.HasErrors() {
		res.Error = diagText(cfg.Files, diags)
		return
	}
	d := config.Compare(old, cfg)
	// The server settings were compared above, before cfg took the
	// running ones; the launchers' are in d.
	res.NeedsRestart = append(res.NeedsRestart, d.NeedsRestart...)
	if err := s.apply(ctx, old, cfg, d, force, res); err != nil {
		res.Error = err.Error()
		return
	}
	res.OK = true
}

// apply makes cfg the configuration in force. Launcher plugins are started
// and reconfigured first: when one refuses, what was done is undone and
// the error returned, nothing else changed.
func (s *Server) apply(ctx context.Context, old, cfg *config.Config, d *config.Diff, force bool, res *ReloadResult) error {
	opts := plugins.LoadOptions{Version: version.Version}
	changes := func(what string, names []string) {
		for _, n := range names {
			res.Changes = append(res.Changes, what+": "+n)
		}
	}

	// 1. New launchers' plugins.
	var added []string
	undo := func() {
		for _, name := range added {
			s.plugins.Remove(name)
		}
	}
	for _, name := range d.LaunchersAdded {
		if diags := plugins.Add(ctx, cfg, s.plugins, cfg.Launcher(name), opts); diags.HasErrors() {
			undo()
			return fmt.Errorf("launcher %q: %s", name, diagText(cfg.Files, diags))
		}
		added = append(added, name)
	}

	// 2. Launchers whose own block is unchanged but whose nodes changed
	// learn their new node list (the Kafka launcher creates the new
	// nodes' topics) before those nodes launch.
	touched := map[string]bool{}
	for _, names := range [][]string{d.NodesAdded, d.NodesRelaunched, d.NodesUpdated} {
		for _, n := range names {
			touched[cfg.Node(n).Launcher] = true
			if o := old.Node(n); o != nil {
				touched[o.Launcher] = true
			}
		}
	}
	for _, n := range d.NodesRemoved {
		touched[old.Node(n).Launcher] = true
	}
	var reconfigured []string
	for _, l := range cfg.Launchers {
		if !touched[l.Name] || slices.Contains(d.LaunchersAdded, l.Name) || slices.Contains(d.LaunchersChanged, l.Name) {
			continue
		}
		p := s.plugins.Get(l.Name)
		if p == nil {
			continue
		}
		if diags := plugins.Reconfigure(ctx, cfg, p, l, opts); diags.HasErrors() {
			for _, name := range reconfigured { // back to what they had
				_ = plugins.Reconfigure(ctx, old, s.plugins.Get(name), old.Launcher(name), opts)
			}
			undo()
			return fmt.Errorf("launcher %q: %s", l.Name, diagText(cfg.Files, diags))
		}
		reconfigured = append(reconfigured, l.Name)
	}
	changes("launcher added", d.LaunchersAdded)

	// From here on nothing is refused: the configuration is in force.
	s.cfg.Store(cfg)
	s.builds.SetConfig(cfg)
	changes("job added", d.JobsAdded)
	changes("job changed", d.JobsChanged)
	changes("job removed", d.JobsRemoved)

	recs := make([]store.NodeRecord, 0, len(d.NodesAdded)+len(d.NodesRelaunched))
	for _, name := range slices.Concat(d.NodesAdded, d.NodesRelaunched) {
		n := cfg.Node(name)
		recs = append(recs, store.NodeRecord{Name: n.Name, Launcher: n.Launcher})
	}
	if err := s.store.RecordNodes(recs, time.Now()); err != nil {
		res.Warnings = append(res.Warnings, fmt.Sprintf("recording the nodes in the store: %v", err))
	}
	busy := func(name string) int {
		if n := s.nodes.Get(name); n != nil {
			return n.Status().Busy
		}
		return 0
	}
	runCtx := context.Background()
	if p := s.runCtx.Load(); p != nil {
		runCtx = *p
	}

	// 3. Nodes.
	for _, name := range d.NodesAdded {
		n := cfg.Node(name)
		if err := s.nodes.Add(n, cfg.Launcher(n.Launcher)); err != nil {
			res.Warnings = append(res.Warnings, err.Error())
		}
	}
	changes("node added", d.NodesAdded)
	for _, name := range d.NodesUpdated {
		if err := s.nodes.Update(cfg.Node(name)); err != nil {
			res.Warnings = append(res.Warnings, err.Error())
		}
	}
	changes("node updated", d.NodesUpdated)
	forced := 0 // running builds a forced relaunch or removal fails
	for _, name := range d.NodesRelaunched {
		b := busy(name)
		n := cfg.Node(name)
		if _, err := s.nodes.Replace(n, cfg.Launcher(n.Launcher), force); err != nil {
			res.Warnings = append(res.Warnings, err.Error())
			continue
		}
		if b > 0 && !force {
			res.Pending = append(res.Pending, fmt.Sprintf("node %s relaunches once its %d running build(s) finish", name, b))
		} else {
			forced += b
			res.Changes = append(res.Changes, "node relaunched: "+name)
		}
	}
	removedBy := map[string][]<-chan struct{}{} // by launcher
	for _, name := range d.NodesRemoved {
		b := busy(name)
		done, err := s.nodes.Remove(name, force)
		if err != nil {
			res.Warnings = append(res.Warnings, err.Error())
			continue
		}
		l := old.Node(name).Launcher
		removedBy[l] = append(removedBy[l], done)
		if b > 0 && !force {
			res.Pending = append(res.Pending, fmt.Sprintf("node %s is removed once its %d running build(s) finish", name, b))
		} else {
			forced += b
			res.Changes = append(res.Changes, "node removed: "+name)
		}
	}

	// 4. Launchers whose block changed: their plugin restarts, at once
	// when the sessions of its agents resume across it, else once their
	// nodes' builds finished.
	for _, name := range d.LaunchersChanged {
		p := s.plugins.Get(name)
		if p == nil {
			continue
		}
		lc := plugins.HostConfig(cfg, cfg.Launcher(name), opts)
		var nodesOf []string
		running := 0
		for _, n := range s.nodes.Nodes() {
			if st := n.Status(); st.Launcher == name {
				nodesOf = append(nodesOf, st.Name)
				running += st.Busy
			}
		}
		resumes := p.Process().Info.Has(launcher.CapResume)
		waitWhy := fmt.Sprintf("launcher %s restarts with its new settings once its nodes' running builds finish", name)
		if force || resumes || running == 0 {
			s.pendingRestart(runCtx, name) // ends a restart an earlier reload left waiting
			err := p.Restart(ctx, lc)
			s.nodes.Unretire(waitWhy, nodesOf...)
			if err != nil {
				res.Warnings = append(res.Warnings, err.Error())
				continue
			}
			why := "no running build"
			switch {
			case force && running > 0 && !resumes:
				why = fmt.Sprintf("forced: %d running build(s) lost their agent", running)
			case resumes:
				why = "its sessions resume"
			}
			res.Changes = append(res.Changes, fmt.Sprintf("launcher restarted: %s (%s)", name, why))
			continue
		}
		res.Pending = append(res.Pending, fmt.Sprintf("launcher %s restarts with its new settings once its nodes' %d running build(s) finish", name, running))
		wctx := s.pendingRestart(runCtx, name) // a later reload's restart replaces this one
		s.nodes.Retire(waitWhy, nodesOf...)
		go func() {
			// Cancelled by a later reload, the nodes stay retired for
			// its restart, which lets them go.
			if !s.nodes.WaitIdle(wctx, nodesOf...) {
				return
			}
			err := p.Restart(wctx, lc)
			s.nodes.Unretire(waitWhy, nodesOf...)
			if err != nil {
				s.logger.Error("pending launcher restart failed", "launcher", name, "error", err)
				return
			}
			s.logger.Info("launcher restarted with its new settings: its nodes' builds finished", "launcher", name)
		}()
	}

	// 5. Launchers removed: their plugin stops once their nodes are gone.
	for _, name := range d.LaunchersRemoved {
		dones := removedBy[name]
		go func() {
			for _, done := range dones {
				select {
				case <-done:
				case <-runCtx.Done():
					return
				}
			}
			s.plugins.Remove(name)
			s.logger.Info("launcher removed", "launcher", name)
		}()
		res.Changes = append(res.Changes, "launcher removed: "+name)
	}
	if forced > 0 {
		res.Warnings = append(res.Warnings, fmt.Sprintf("forced: %d running build(s) of relaunched or removed nodes fail", forced))
	}
	// Pools (issue 14) are not part of the configuration yet: when they
	// come, config.Diff gains their lists and they are applied here, after
	// the nodes, the way nodes are (added, resized; removed once drained).
	return nil
}

// pendingRestart returns the context of a launcher restart waiting for
// running builds, ending the one an earlier reload left waiting for the
// same launcher: only the newest configuration's restart happens.
func (s *Server) pendingRestart(parent context.Context, launcherName string) context.Context {
	s.reloads.mu.Lock()
	defer s.reloads.mu.Unlock()
	if cancel := s.reloads.restarts[launcherName]; cancel != nil {
		cancel()
	}
	if s.reloads.restarts == nil {
		s.reloads.restarts = map[string]context.CancelFunc{}
	}
	ctx, cancel := context.WithCancel(parent)
	s.reloads.restarts[launcherName] = cancel
	return ctx
}

func (s *Server) reloadRoutes(rt router) {
	rt.handle("GET /v1/reload", read, func(w http.ResponseWriter, r *http.Request) {
		last := s.LastReload()
		if last == nil {
			writeJSON(w, http.StatusOK, map[string]any{})
			return
		}
		writeJSON(w, http.StatusOK, last)
	})
	rt.handle("POST /v1/reload", admin, func(w http.ResponseWriter, r *http.Request) {
		force, _ := strconv.ParseBool(r.URL.Query().Get("force"))
		by := ""
		if id, ok := identityOf(r.Context()); ok {
			by = id.Name
		}
		// A client that goes away does not cut the reload short.
		res := s.Reload(context.WithoutCancel(r.Context()), ReloadAPI, by, force)
		code := http.StatusOK
		if !res.OK {
			code = http.StatusUnprocessableEntity
		}
		writeJSON(w, code, res)
	})
}
