package nodes

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func waitClosed(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitTimeout):
		t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
	}
}

// TestReloadOperations: a node added by a reload launches; an update
// changes labels in place; a relaunch and a removal wait for the node's
// running build (no new build meanwhile), unless forced.
func TestReloadOperations(t *testing.T) {
	l := &testLauncher{launch: func(context.Context, int) (launcher.Conn, error) {
		return nil, errors.New("no agent here")
	}}
	m, _, _ := startNode(t, l, config.Node{Labels: []string{"a"}}, nil)
	n1 := m.Get("n1")

	// Add: the new node is run (launched) at once.
	if err := m.Add(&config.Node{Name: "n2", Launcher: "test", Executors: 1}, nil); err != nil {
		t.Fatal(err)
	}
	if err := m.Add(&config.Node{Name: "n2", Launcher: "test", Executors: 1}, nil); err == nil {
		t.Fatal("adding a node twice succeeded")
	}
	waitFor(t, "n2 to be launched", func() bool { return m.Get("n2").Status().Reason == "no agent here" })

	// Update: labels change in place, the node stays the same.
	if err := m.Update(&config.Node{Name: "n1", Launcher: "test", Labels: []string{"b"}, Executors: 3}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n1's new labels", func() bool { return n1.Covers([]string{"b"}) && !n1.Covers([]string{"a"}) })
	if m.Get("n1") != n1 || n1.Status().Executors != 3 {
		t.Fatalf("update replaced the node or lost executors: %+v", n1.Status())
	}

	// Replace waits for the running build.
	m.Claim(n1)
	done, err := m.Replace(&config.Node{Name: "n1", Launcher: "test", Labels: []string{"b"}, Executors: 3, HeartbeatTimeout: time.Minute}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if st := n1.Status(); st.Retiring != retireRelaunch {
		t.Fatalf("n1 while its build runs: %+v", st)
	}
	if closed(done) || m.Get("n1") != n1 {
		t.Fatal("n1 relaunched while its build runs")
	}
	m.Release(n1)
	waitClosed(t, "the relaunch", done)
	n1b := m.Get("n1")
	if n1b == n1 || n1b.Config().HeartbeatTimeout != time.Minute || n1b.Status().Retiring != "" {
		t.Fatalf("after the relaunch: same node %v, config %+v, status %+v", n1b == n1, n1b.Config(), n1b.Status())
	}
	waitFor(t, "the relaunched n1 to launch", func() bool { return n1b.Status().Reason == "no agent here" })

	// Remove waits for the running build too; forced, it does not.
	m.Claim(n1b)
	gone, err := m.Remove("n1", false)
	if err != nil {
		t.Fatal(err)
	}
	if closed(gone) || m.Get("n1") == nil || n1b.Status().Retiring != retireRemove {
		t.Fatal("n1 removed while its build runs")
	}
	m.Release(n1b)
	waitClosed(t, "the removal", gone)
	if m.Get("n1") != nil {
		t.Fatal("n1 still listed after its removal")
	}
	n2 := m.Get("n2")
	m.Claim(n2)
	gone, err = m.Remove("n2", true)
	if err != nil {
		t.Fatal(err)
	}
	waitClosed(t, "the forced removal", gone)
	if len(m.Nodes()) != 0 {
		t.Fatalf("nodes left: %d", len(m.Nodes()))
	}
}
