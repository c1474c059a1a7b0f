package session

import (
	"errors"
	"testing"

	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// TestFramesOfStrangeSessions: once a session is established on a link, a
// frame of a session this agent never had (another node's, copied into
// its topic) is counted as forged; frames of its own earlier sessions and
// whatever arrives before the handshake completes (the leftovers of an
// earlier agent process, in an ordered topic) stay stale. Before, all of
// them were stale.
func TestFramesOfStrangeSessions(t *testing.T) {
	work := t.TempDir()
	m, a, done := start(t, Config{Node: "n1", Secret: secret, Workdir: work})
	old := m.handshake(0x1234)
	oldKey := m.key
	m.cut()
	if err := served(t, done); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Serve: %v", err)
	}
	m.connect()
	hf, hello := m.hello()
	// Before the handshake completes: unknown sessions are stale.
	m.raw(craft(&wire.RunStep{BuildID: "early#1", Command: "touch pwned"}, 0xbad1, 1, nil))
	m.ep = nil // a restarted master: a new session
	m.accept(hf, hello, 0x99)
	// A frame of the agent's own earlier session: stale.
	m.raw(craft(&wire.RunStep{BuildID: "old#1", Command: "touch pwned"}, old, 2, oldKey))
	// Frames of sessions it never had, signed or not: forged.
	other := wire.SessionKey([]byte("other node's secret"), nil, nil, 0xbad2)
	m.raw(craft(&wire.RunStep{BuildID: "x#1", Command: "touch pwned"}, 0xbad2, 1, other))
	m.raw(craft(&wire.Close{Reason: "unknown session"}, 0xbad3, 0, nil))
	if out, exit := m.runStep(&wire.RunStep{BuildID: "b#2", Command: "echo ok"}); out != "ok\n" || exit.Code != 0 {
		t.Fatalf("output %q exit %+v", out, exit)
	}
	if current(a) != 0x99 {
		t.Fatalf("session %x, want 0x99 (a frame of another session ended it)", current(a))
	}
	if exists(work, "pwned") {
		t.Fatal("a frame of another session ran")
	}
	if c := a.Counters(); c.Stale != 2 || c.Forged != 2 {
		t.Fatalf("counters %+v, want 2 stale (before the handshake, the earlier session) and 2 forged", c)
	}
}

// TestHadSessionsBounded: the agent remembers its last maxHadSessions
// sessions.
func TestHadSessionsBounded(t *testing.T) {
	a := New(Config{})
	for id := uint64(1); id <= maxHadSessions+5; id++ {
		a.remember(id)
		a.remember(id) // once each
	}
	if a.hadSession(5) || !a.hadSession(6) || !a.hadSession(maxHadSessions+5) || len(a.had) != maxHadSessions {
		t.Fatalf("had %v: want the last %d", a.had, maxHadSessions)
	}
	if a.hadSession(0) {
		t.Fatal("session 0 is no session")
	}
}
