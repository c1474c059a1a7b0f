package plugins

import (
	"context"
	"fmt"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// Manager owns the launcher plugins of one server.
type Manager struct {
	logger hclog.Logger

	mu      sync.Mutex
	plugins []*Plugin
	stopped bool
}

// NewManager returns an empty manager; plugin logs go to named
// sub-loggers of logger.
func NewManager(logger hclog.Logger) *Manager {
	return &Manager{logger: logger}
}

// Start starts the binary at path as launcher name, pinned to sha when
// non-empty, and supervises it until Stop.
func (m *Manager) Start(ctx context.Context, name, path string, sha []byte) (*Plugin, error) {
	m.mu.Lock()
	stopped := m.stopped
	m.mu.Unlock()
	if stopped {
		return nil, errStopped
	}
	p := newPlugin(name, path, sha, m.logger.Named(name))
	if err := p.start(ctx); err != nil {
		return nil, fmt.Errorf("start launcher %q: %w", name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		p.Process().Kill()
		return nil, errStopped
	}
	m.plugins = append(m.plugins, p)
	go p.supervise()
	return p, nil
}

// Get returns the plugin of launcher name, or nil.
func (m *Manager) Get(name string) *Plugin {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.plugins {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// All returns the plugins in start order.
func (m *Manager) All() []*Plugin {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*Plugin(nil), m.plugins...)
}

// Remove stops the plugin of launcher name and forgets it (a reload
// removed its launcher block).
func (m *Manager) Remove(name string) {
	m.mu.Lock()
	var p *Plugin
	for i, q := range m.plugins {
		if q.Name == name {
			p = q
			m.plugins = append(m.plugins[:i:i], m.plugins[i+1:]...)
			break
		}
	}
	m.mu.Unlock()
	if p != nil {
		p.Stop()
	}
}

// Stop stops every plugin, with everything each one started.
func (m *Manager) Stop() {
	m.mu.Lock()
	m.stopped = true
	ps := m.plugins
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Stop()
		}()
	}
	wg.Wait()
}
