package nodes

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// A launcher launches at most max_concurrent_launches nodes at once; the
// others show that they wait for a slot.
func TestLaunchSlotsBoundConcurrentLaunches(t *testing.T) {
	const nodes, limit = 5, 2
	var now, peak atomic.Int32
	release := make(chan struct{})
	l := &testLauncher{launch: func(ctx context.Context, _ int) (launcher.Conn, error) {
		k := now.Add(1)
		defer now.Add(-1)
		for {
			p := peak.Load()
			if k <= p || peak.CompareAndSwap(p, k) {
				break
			}
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return newPipeConn(), nil
	}}
	cfg := &config.Config{Launchers: []*config.Launcher{{Name: "test", MaxConcurrentLaunches: limit}}}
	for i := range nodes {
		cfg.Nodes = append(cfg.Nodes, &config.Node{Name: fmt.Sprintf("n%d", i), Launcher: "test", Executors: 1})
	}
	m := NewManager(cfg, nil, Options{Heartbeat: 100 * time.Millisecond, HeartbeatTimeout: 2 * time.Second}, hclog.NewNullLogger())
	p := &testPlugin{proc: &launcher.Process{Launcher: l, Info: &launcher.Info{}}, restarted: make(chan struct{}, 1)}
	m.plugin = func(string) plugin { return p }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	waitFor(t, "two launches and three nodes waiting for a slot", func() bool {
		waiting := 0
		for _, n := range m.Nodes() {
			if strings.HasPrefix(n.Status().Reason, "waiting for a launch slot (launcher test launches at most 2 nodes at once)") {
				waiting++
			}
		}
		return now.Load() == limit && waiting == nodes-limit
	})
	for range nodes {
		release <- struct{}{}
	}
	waitFor(t, "every node launched", func() bool { return l.launches.Load() == nodes })
	if p := peak.Load(); p != limit {
		t.Fatalf("%d launches at once, want at most (and reaching) %d", p, limit)
	}
}

// Launch skips what remains of the relaunch backoff; it is refused for a
// node launching or online, and for a drained node.
func TestLaunchNowSkipsBackoff(t *testing.T) {
	l := &testLauncher{launch: func(context.Context, int) (launcher.Conn, error) {
		return nil, launcher.Permanent(errors.New("refused"))
	}}
	m, _, _ := startNode(t, l, config.Node{}, func(m *Manager) { m.permanentRetry = time.Hour })
	n := m.Get("n1")
	waitFor(t, "the refusal", func() bool { return n.Status().Reason == "refused" })
	if err := m.Launch(n, "alice"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second launch, within the hour of the retry", func() bool { return l.launches.Load() == 2 })
	if err := m.Drain(n, "alice", "maintenance"); err != nil {
		t.Fatal(err)
	}
	if err := m.Launch(n, "alice"); !errors.Is(err, ErrDrained) {
		t.Fatalf("Launch of a drained node: %v, want ErrDrained", err)
	}
}

// A drained node takes no new build; online brings it back.
func TestDrainKeepsBuildsOff(t *testing.T) {
	l := &testLauncher{launch: func(context.Context, int) (launcher.Conn, error) { return newPipeConn(), nil }}
	m, _, _ := startNode(t, l, config.Node{}, nil)
	n := m.Get("n1")
	n.mu.Lock()
	n.state = StateOnline // as if its agent had said hello
	n.mu.Unlock()
	if err := m.Drain(n, "alice", "disk swap"); err != nil {
		t.Fatal(err)
	}
	if st := n.Status(); st.Drain == nil || st.Drain.By != "alice" || st.Drain.Reason != "disk swap" {
		t.Fatalf("status drain = %+v", st.Drain)
	}
	if _, ok := m.Acquire([]string{"n1"}); ok {
		t.Fatal("a drained node took a build")
	}
	if err := m.Online(n, "bob"); err != nil {
		t.Fatal(err)
	}
	if err := m.Online(n, "bob"); !errors.Is(err, ErrNotDrained) {
		t.Fatalf("Online of a node not drained: %v", err)
	}
	if _, ok := m.Acquire([]string{"n1"}); !ok {
		t.Fatal("a node back online took no build")
	}
}

// A launch waiting for a host key's approval shows the fingerprint; the
// approval is passed on the next launch, at once.
func TestApproveKeyPassesItOnLaunch(t *testing.T) {
	const fp = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
	l := &testLauncher{launch: func(context.Context, int) (launcher.Conn, error) {
		return nil, launcher.ApprovalPending(fp, errors.New("host key "+fp+" waits for approval"))
	}}
	m, _, _ := startNode(t, l, config.Node{}, func(m *Manager) { m.permanentRetry = time.Hour })
	n := m.Get("n1")
	waitFor(t, "the pending key", func() bool { return n.Status().PendingHostKey == fp })
	if err := m.ApproveKey(n, "alice", "SHA256:nope"); !errors.Is(err, ErrBadFingerprint) {
		t.Fatalf("approving a malformed fingerprint: %v", err)
	}
	if err := m.ApproveKey(n, "alice", fp); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a launch with the approved key, within the hour of the retry", func() bool {
		ln := l.last.Load()
		return ln != nil && len(ln.ApprovedKeys) == 1 && ln.ApprovedKeys[0] == fp
	})
}

// An on-demand node is launched only once a queued build wants labels it
// carries (and not while it is drained), recorded once however often it
// is relaunched for that demand.
func TestOnDemandWaitsForDemand(t *testing.T) {
	l := &testLauncher{launch: func(context.Context, int) (launcher.Conn, error) {
		return nil, errors.New("no route to host")
	}}
	node := config.Node{Labels: []string{"gpu"}, Availability: config.Availability{Mode: config.AvailabilityOnDemand, IdleTimeout: time.Minute}}
	m, _, log := startNode(t, l, node, nil)
	n := m.Get("n1")
	waitFor(t, "the node to wait for demand", func() bool { return strings.HasPrefix(n.Status().Reason, "on demand") })
	m.Demand([][]string{{"linux"}})
	if err := m.Drain(n, "alice", ""); err != nil {
		t.Fatal(err)
	}
	m.Demand([][]string{{"gpu"}})
	waitFor(t, "the drained node to say so", func() bool { return strings.Contains(n.Status().Reason, "drained") })
	if got := l.launches.Load(); got != 0 {
		t.Fatalf("%d launches without demand for it (or while drained)", got)
	}
	if err := m.Online(n, "alice"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two launches for the demand", func() bool { return l.launches.Load() >= 2 })
	if got := log.count("node demand-launch"); got != 1 {
		t.Errorf("%d demand-launch records, want 1", got)
	}
	m.Demand(nil)
	waitFor(t, "the node to wait for demand again", func() bool { return strings.HasPrefix(n.Status().Reason, "on demand") })
}
