package nodes

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/conveyor-ci/conveyor/core/session"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// Transport is a node's link as the transport page shows it: what the
// master counted itself and what the node's launcher reports.
type Transport struct {
	Node     string `json:"node"`
	Launcher string `json:"launcher"`
	State    string `json:"state"`
	// Description says where the agent runs, as the launcher put it.
	Description string          `json:"description,omitempty"`
	Traffic     session.Traffic `json:"traffic"`
	// Link is what the launcher knows of the link (stats capability);
	// nil when it reports nothing.
	Link *launcher.LinkStats `json:"link,omitempty"`
	// LinkError says why the launcher's report is missing.
	LinkError string `json:"link_error,omitempty"`
}

// Traffic is what crossed the node's links since the server started.
func (n *Node) Traffic() session.Traffic { return n.sess.Traffic() }

// linkStatsTimeout bounds how long a page waits for a plugin's report.
const linkStatsTimeout = 2 * time.Second

// Transport reports node n's link.
func (m *Manager) Transport(ctx context.Context, n *Node) Transport {
	st := n.Status()
	t := Transport{Node: st.Name, Launcher: st.Launcher, State: st.State, Description: st.Description, Traffic: n.Traffic()}
	p := m.plugin(n.Config().Launcher)
	if p == nil {
		t.LinkError = "launcher not loaded"
		return t
	}
	proc := p.Process()
	ls, ok := proc.Launcher.(launcher.LinkStater)
	if !ok || !proc.Info.Has(launcher.CapStats) {
		return t
	}
	ctx, cancel := context.WithTimeout(ctx, linkStatsTimeout)
	defer cancel()
	switch stats, err := ls.LinkStats(ctx, n.name); {
	case errors.Is(err, launcher.ErrNoStats):
	case err != nil:
		t.LinkError = err.Error()
	default:
		t.Link = stats
	}
	return t
}

// LinkMalformed asks the launchers with the stats capability what their
// transport dropped for each node before decoding any frame
// (launcher.LinkStats.Malformed), all nodes at once, each answer within
// linkStatsTimeout. A node whose launcher cannot say is absent.
func (m *Manager) LinkMalformed(ctx context.Context) map[string]uint64 {
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := map[string]uint64{}
	for _, n := range m.Nodes() {
		p := m.plugin(n.Config().Launcher)
		if p == nil || p.Restarting() > 0 {
			continue
		}
		proc := p.Process()
		ls, ok := proc.Launcher.(launcher.LinkStater)
		if !ok || !proc.Info.Has(launcher.CapStats) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, linkStatsTimeout)
			defer cancel()
			if st, err := ls.LinkStats(ctx, n.name); err == nil {
				mu.Lock()
				out[n.name] = st.Malformed
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}
