package store

import (
	"errors"
	"testing"
	"time"
)

func TestNodeRecordsKeepFirstSeenAndSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t1 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	t2 := t1.Add(time.Hour)
	if err := s.RecordNodes([]NodeRecord{{Name: "a", Launcher: "kafka"}, {Name: "b", Launcher: "ssh"}}, t1); err != nil {
		t.Fatal(err)
	}
	// The node moves to another launcher: the record follows, FirstSeen stays.
	if err := s.RecordNodes([]NodeRecord{{Name: "a", Launcher: "ssh"}}, t2); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, err := s.Node("a")
	if err != nil {
		t.Fatal(err)
	}
	if a.Launcher != "ssh" || !a.FirstSeen.Equal(t1) || !a.LastSeen.Equal(t2) {
		t.Errorf("a = %+v, want launcher ssh, first seen %v, last seen %v", a, t1, t2)
	}
	all, err := s.Nodes()
	if err != nil || len(all) != 2 || all[0].Name != "a" || all[1].Name != "b" {
		t.Fatalf("Nodes() = %+v, %v", all, err)
	}
	if err := s.ForgetNode("b"); err != nil {
		t.Fatal(err)
	}
	if err := s.ForgetNode("b"); err != nil {
		t.Fatalf("forgetting twice: %v", err)
	}
	if _, err := s.Node("b"); !errors.Is(err, ErrNodeNotFound) {
		t.Errorf("Node(b) after ForgetNode: %v, want ErrNodeNotFound", err)
	}
}
