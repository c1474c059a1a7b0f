package store

import (
	"fmt"
	"testing"
	"time"
)

func TestNodeControlPersists(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	if err := s.SetNodeDrain("n1", &NodeDrain{Since: now, By: "alice", Reason: "disk swap"}, NodeEvent{Time: now, Action: "drain", By: "alice", Reason: "disk swap"}); err != nil {
		t.Fatal(err)
	}
	if err := s.ApproveNodeKey("n1", "SHA256:abc", NodeEvent{Time: now, Action: "approve-key", By: "alice"}); err != nil {
		t.Fatal(err)
	}
	if err := s.ApproveNodeKey("n1", "SHA256:abc", NodeEvent{Time: now, Action: "approve-key", By: "bob"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d, err := s.NodeDrain("n1")
	if err != nil || d == nil || d.By != "alice" || d.Reason != "disk swap" {
		t.Fatalf("drain after reopening = %+v, %v", d, err)
	}
	if keys, err := s.NodeApprovedKeys("n1"); err != nil || len(keys) != 1 || keys[0] != "SHA256:abc" {
		t.Fatalf("approved keys = %v, %v", keys, err)
	}
	if d, err := s.NodeDrain("other"); d != nil || err != nil {
		t.Fatalf("unknown node drain = %+v, %v", d, err)
	}
	if err := s.SetNodeDrain("n1", nil, NodeEvent{Time: now, Action: "online", By: "bob"}); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.NodeDrain("n1"); d != nil {
		t.Fatalf("drain after online = %+v", d)
	}
	evs, err := s.NodeEvents("n1")
	if err != nil || len(evs) != 4 || evs[0].Action != "drain" || evs[3].Action != "online" {
		t.Fatalf("events = %+v, %v", evs, err)
	}
}

func TestNodeEventsBounded(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range MaxNodeEvents + 5 {
		if err := s.AddNodeEvent("n", NodeEvent{Action: "launch", Reason: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	evs, err := s.NodeEvents("n")
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != MaxNodeEvents || evs[0].Reason != "5" || evs[len(evs)-1].Reason != fmt.Sprint(MaxNodeEvents+4) {
		t.Fatalf("%d events, first %q last %q", len(evs), evs[0].Reason, evs[len(evs)-1].Reason)
	}
}
