package plugins

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// Restart backoff bounds, and how long a plugin must stay up for the
// backoff to reset.
var (
	restartMinBackoff = 200 * time.Millisecond
	restartMaxBackoff = 30 * time.Second
	restartReset      = time.Minute
	exitPollInterval  = 200 * time.Millisecond
)

// Plugin is one supervised launcher plugin. When its process exits or
// crashes, it is started again with exponential backoff and given its
// configuration again; subscribers learn of each restart.
type Plugin struct {
	// Name is the launcher's name in the configuration.
	Name string
	// Path is the plugin binary.
	Path string

	sha    []byte
	logger hclog.Logger

	mu       sync.Mutex
	proc     *launcher.Process
	config   *launcher.Config
	restarts int
	attempt  int // the restart under way (1, 2...), 0 when none
	lastErr  error
	subs     []chan struct{}
	stopping bool

	stop chan struct{}
	done chan struct{}
	// restartMu orders a deliberate restart (Restart) with supervise's.
	restartMu sync.Mutex
}

func newPlugin(name, path string, sha []byte, logger hclog.Logger) *Plugin {
	return &Plugin{Name: name, Path: path, sha: sha, logger: logger,
		stop: make(chan struct{}), done: make(chan struct{})}
}

// start starts the process for the first time.
func (p *Plugin) start(ctx context.Context) error {
	proc, err := launcher.Start(ctx, launcher.ClientOptions{Path: p.Path, SHA256: p.sha, Logger: p.logger})
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.proc = proc
	p.mu.Unlock()
	p.logger.Info("plugin started", "path", p.Path, "pid", proc.Pid(),
		"version", proc.Info.Version, "protocol", proc.Protocol, "capabilities", proc.Info.Capabilities)
	return nil
}

// Process returns the current plugin process.
func (p *Plugin) Process() *launcher.Process {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.proc
}

// Launcher returns the current process's launcher; after a restart it is
// the new process's.
func (p *Plugin) Launcher() launcher.Launcher { return p.Process().Launcher }

// Info is what the plugin reported when it last started.
func (p *Plugin) Info() *launcher.Info { return p.Process().Info }

// Restarts counts the restarts since the host started the plugin.
func (p *Plugin) Restarts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.restarts
}

// Restarting reports the restart under way (attempt 1, 2...; 0 when the
// plugin runs): from the moment its process exited until the new one is
// configured. Calls on the plugin then fail; a node's reason says this
// instead of their errors.
func (p *Plugin) Restarting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.attempt == 0 && p.proc != nil && p.proc.Exited() && !p.stopping {
		return 1 // exited; supervise has not noticed yet
	}
	return p.attempt
}

// Configure hands the plugin its configuration and keeps it to hand again
// after a restart. Warnings (launcher.ConfigErrors holding warnings only)
// are returned, the configuration kept.
func (p *Plugin) Configure(ctx context.Context, cfg *launcher.Config) error {
	err := p.Launcher().Configure(ctx, cfg)
	if launcher.ConfigureFailed(err) {
		return err
	}
	p.mu.Lock()
	p.config = cfg
	p.mu.Unlock()
	return err
}

// Subscribe returns a channel that receives a value after every restart
// (dropped when the subscriber has not taken the previous one yet).
func (p *Plugin) Subscribe() <-chan struct{} {
	c := make(chan struct{}, 1)
	p.mu.Lock()
	p.subs = append(p.subs, c)
	p.mu.Unlock()
	return c
}

// supervise watches the process and restarts it when it exits, until Stop.
func (p *Plugin) supervise() {
	defer close(p.done)
	backoff := restartMinBackoff
	started := time.Now()
	tick := time.NewTicker(exitPollInterval)
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
		p.restartMu.Lock()
		exited := p.Process().Exited()
		p.restartMu.Unlock()
		if !exited {
			continue
		}
		if time.Since(started) > restartReset {
			backoff = restartMinBackoff
		}
		p.logger.Error("plugin exited unexpectedly, restarting", "pid", p.Process().Pid(), "backoff", backoff)
		for attempt := 1; ; attempt++ {
			p.mu.Lock()
			p.attempt = attempt
			p.mu.Unlock()
			select {
			case <-p.stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, restartMaxBackoff)
			p.restartMu.Lock()
			err := p.restart()
			p.restartMu.Unlock()
			if err != nil {
				p.logger.Error("plugin restart failed", "error", err, "next_attempt", backoff)
				continue
			}
			break
		}
		started = time.Now()
	}
}

func (p *Plugin) restart() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p.Process().Kill() // reap what is left of the old process group
	if err := p.start(ctx); err != nil {
		p.setErr(err)
		return err
	}
	p.mu.Lock()
	cfg := p.config
	p.mu.Unlock()
	if cfg != nil {
		if err := p.Launcher().Configure(ctx, cfg); launcher.ConfigureFailed(err) {
			err = fmt.Errorf("configure after restart: %w", err)
			p.setErr(err)
			p.Process().Kill()
			return err
		}
	}
	p.mu.Lock()
	p.restarts++
	p.attempt = 0
	p.lastErr = nil
	subs := append([]chan struct{}(nil), p.subs...)
	p.mu.Unlock()
	for _, c := range subs {
		select {
		case c <- struct{}{}:
		default:
		}
	}
	p.logger.Info("plugin restarted", "pid", p.Process().Pid())
	return nil
}

// Restart stops the plugin's process and starts a new one configured with
// cfg (a reload changed the launcher block): what the old process held
// (connections to agents) ends with it; nodes relaunch through the new
// one, as after a crash (Subscribe). On failure the plugin is left to its
// supervision, which retries with the configuration it had.
func (p *Plugin) Restart(ctx context.Context, cfg *launcher.Config) error {
	p.restartMu.Lock()
	defer p.restartMu.Unlock()
	p.mu.Lock()
	prev := p.config
	p.config = cfg
	p.mu.Unlock()
	if err := p.restart(); err != nil {
		p.mu.Lock()
		p.config = prev
		p.mu.Unlock()
		return fmt.Errorf("restart launcher %q: %w", p.Name, err)
	}
	return nil
}

func (p *Plugin) setErr(err error) {
	p.mu.Lock()
	p.lastErr = err
	p.mu.Unlock()
}

// LastError is the error of the last failed restart, nil once one succeeds.
func (p *Plugin) LastError() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastErr
}

// Stop ends supervision and kills the plugin with its process group.
func (p *Plugin) Stop() {
	p.mu.Lock()
	if p.stopping {
		p.mu.Unlock()
		<-p.done
		return
	}
	p.stopping = true
	p.mu.Unlock()
	close(p.stop)
	<-p.done
	if proc := p.Process(); proc != nil {
		proc.Kill()
		p.logger.Info("plugin stopped", "pid", proc.Pid())
	}
}

// errStopped is returned for calls on a stopped manager.
var errStopped = errors.New("plugin manager stopped")
