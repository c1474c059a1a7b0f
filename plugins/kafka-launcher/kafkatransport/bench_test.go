package kafkatransport

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
)

// BenchmarkRoundTrip measures a small frame master -> agent -> master.
func BenchmarkRoundTrip(b *testing.B) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	cfg := Config{Brokers: c.ListenAddrs()}
	tp := TopicsFor("", "bench")
	if err = EnsureTopics(b.Context(), cfg, []string{tp.Commands, tp.Events}, 1, 1); err != nil {
		b.Fatal(err)
	}
	m, err := OpenMaster(b.Context(), cfg, "bench", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	a, err := DialAgent(b.Context(), cfg, "bench", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	frame := make([]byte, 256)
	for b.Loop() {
		if err := m.Send(frame); err != nil {
			b.Fatal(err)
		}
		f, err := a.Recv()
		if err != nil {
			b.Fatal(err)
		}
		if err := a.Send(f); err != nil {
			b.Fatal(err)
		}
		if _, err := m.Recv(); err != nil {
			b.Fatal(err)
		}
	}
}
