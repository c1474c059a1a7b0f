package session

import (
	"testing"

	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// TestCrossNodeFrameForged: a frame of node B's session written into node
// A's link (an attacker copying B's topic into A's) is counted as forged
// on A and never answered; a frame of A's own earlier session stays stale
// and is told to end, as before. Before, both were stale and B's session
// was told to end on A's link.
func TestCrossNodeFrameForged(t *testing.T) {
	ha, serveA := established(t, Options{Node: "cross-a"}, false)
	hb, serveB := established(t, Options{Node: "cross-b"}, false)
	a, b := ha.agent, hb.agent

	before := ha.s.Counters()
	// A frame B's agent signed in its session, and the same unsigned.
	a.sendRaw(&wire.Ping{Nonce: 7}, b.session, 0, b.key)
	a.sendRaw(&wire.Exit{BuildID: "job#1"}, b.session, 1, nil)
	a.send(&wire.Ping{Nonce: 8})
	if f, p := expectInSession[*wire.Pong](a); p.Nonce != 8 {
		t.Fatalf("got Pong %+v in session %x, want only A's own ping answered (nothing told to B's session)", p, f.Session)
	}
	if got := ha.s.Counters(); got.Forged != before.Forged+2 || got.Stale != before.Stale {
		t.Fatalf("A's counters %+v (before %+v): want B's frames forged, none stale", got, before)
	}
	if c := hb.s.Counters(); c.Forged != 0 || c.Stale != 0 {
		t.Errorf("B's counters %+v: B saw nothing", c)
	}

	// A leftover of A's own earlier session: stale, and told to end.
	const earlier = 0xa11ce
	owners.add("cross-a", earlier)
	before = ha.s.Counters()
	a.sendRaw(&wire.Ping{Nonce: 9}, earlier, 0, nil)
	if f, cl := expect[*wire.Close](a); f.Session != earlier {
		t.Fatalf("got Close %+v in session %x, want the earlier session %x told to end", cl, f.Session, earlier)
	}
	if got := ha.s.Counters(); got.Stale != before.Stale+1 || got.Forged != before.Forged {
		t.Fatalf("A's counters %+v (before %+v): want A's earlier session stale", got, before)
	}
	notYet(t, serveA, "A's Serve")
	notYet(t, serveB, "B's Serve")
}

// TestSessionOwnersBounded: the registry keeps the last maxOwnedSessions
// ids of each node.
func TestSessionOwnersBounded(t *testing.T) {
	o := &sessionOwners{node: map[uint64]string{}, ids: map[string][]uint64{}}
	for id := uint64(1); id <= maxOwnedSessions+10; id++ {
		o.add("n", id)
		o.add("m", 1000+id)
	}
	if got := o.owner(1); got != "" {
		t.Errorf("owner(1) = %q, want forgotten", got)
	}
	if got := o.owner(maxOwnedSessions + 10); got != "n" {
		t.Errorf("owner of the newest id = %q, want n", got)
	}
	if got := o.otherNode("m", maxOwnedSessions+10); got != "n" {
		t.Errorf("otherNode(m, n's id) = %q, want n", got)
	}
	if got := o.otherNode("n", maxOwnedSessions+10); got != "" {
		t.Errorf("otherNode(n, its own id) = %q, want none", got)
	}
	if len(o.node) != 2*maxOwnedSessions || len(o.ids["n"]) != maxOwnedSessions {
		t.Errorf("registry holds %d ids, n %d: want %d per node", len(o.node), len(o.ids["n"]), maxOwnedSessions)
	}
}
