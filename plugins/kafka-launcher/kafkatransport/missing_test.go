package kafkatransport

import (
	"slices"
	"testing"
)

func TestMissingTopics(t *testing.T) {
	c := newCluster(t)
	cfg := Config{Brokers: c.ListenAddrs()}
	sc, err := cfg.Sarama()
	if err != nil {
		t.Fatal(err)
	}
	if err := EnsureTopics(ctxT(t), cfg, []string{"t.a", "t.b"}, 1, 1); err != nil {
		t.Fatalf("EnsureTopics: %v", err)
	}
	tests := []struct {
		name       string
		ask, wantM []string
	}{
		{"all exist", []string{"t.a", "t.b"}, nil},
		{"one missing", []string{"t.a", "t.c"}, []string{"t.c"}},
		{"none exists", []string{"t.c", "t.d"}, []string{"t.c", "t.d"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := missingTopics(cfg.Brokers, sc, tt.ask)
			if err != nil || !slices.Equal(got, tt.wantM) {
				t.Fatalf("missingTopics(%v) = %v, %v; want %v", tt.ask, got, err, tt.wantM)
			}
		})
	}
	// Ensuring topics some of which exist creates the others.
	if err := EnsureTopics(ctxT(t), cfg, []string{"t.a", "t.c"}, 1, 1); err != nil {
		t.Fatalf("EnsureTopics: %v", err)
	}
	if got, err := missingTopics(cfg.Brokers, sc, []string{"t.a", "t.b", "t.c"}); err != nil || len(got) != 0 {
		t.Fatalf("after EnsureTopics: missing %v, %v", got, err)
	}
	if _, err := missingTopics([]string{"127.0.0.1:1"}, sc, []string{"t.a"}); err == nil {
		t.Fatal("no error from a broker nobody listens on")
	}
}
