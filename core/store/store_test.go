package store

import (
	"testing"
	"time"
)

func TestCreateNumbersPerJobAndSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i, job := range []string{"a", "b", "a", "a", "ab"} {
		b := &Build{Job: job, Status: StatusQueued, QueuedAt: time.Now()}
		if err := s.Create(b); err != nil {
			t.Fatal(err)
		}
		want := map[int]int{0: 1, 1: 1, 2: 2, 3: 3, 4: 1}[i]
		if b.Number != want {
			t.Fatalf("build %d of %s numbered %d, want %d", i, job, b.Number, want)
		}
	}
	b, err := s.Get("a", 2)
	if err != nil {
		t.Fatal(err)
	}
	code := 3
	b.Status, b.Steps = StatusFailure, []Step{{Name: "x", Status: StatusFailure, ExitCode: &code}}
	if err := s.Save(b); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Get("a", 2)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != StatusFailure || *got.Steps[0].ExitCode != 3 {
		t.Fatalf("reopened build = %+v", got)
	}
	next := &Build{Job: "a"}
	if err := s.Create(next); err != nil || next.Number != 4 {
		t.Fatalf("next build number = %d, %v; want 4", next.Number, err)
	}
	list, err := s.List("a", 0)
	if err != nil {
		t.Fatal(err)
	}
	var nums []int
	for _, b := range list {
		nums = append(nums, b.Number)
	}
	if len(nums) != 4 || nums[0] != 4 || nums[3] != 1 {
		t.Fatalf("List(a) numbers = %v, want [4 3 2 1]", nums)
	}
	if l, _ := s.List("a", 2); len(l) != 2 {
		t.Fatalf("List(a, 2) returned %d builds", len(l))
	}
	if l, _ := s.List("ab", 0); len(l) != 1 {
		t.Fatalf("List(ab) returned %d builds, want 1 (prefix must not leak)", len(l))
	}
	unf, _ := s.Unfinished()
	if len(unf) != 5 { // a#1, a#3, a#4, b#1, ab#1: all but the failed a#2
		t.Fatalf("Unfinished returned %d builds, want 5", len(unf))
	}
	if _, err := s.Get("zzz", 1); err == nil {
		t.Fatal("Get of a missing build succeeded")
	}
}
