package kafkatransport

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
)

// benchPair opens both sides of a node on a fresh in-process broker.
func benchPair(b *testing.B) (m, a *Conn) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	cfg := Config{Brokers: c.ListenAddrs()}
	tp := TopicsFor("", "bench")
	if err = EnsureTopics(b.Context(), cfg, []string{tp.Commands, tp.Events}, 1, 1); err != nil {
		b.Fatal(err)
	}
	if m, err = OpenMaster(b.Context(), cfg, "bench", nil); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	if a, err = DialAgent(b.Context(), cfg, "bench", nil); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { a.Close() })
	return m, a
}

// BenchmarkStream measures output-sized frames (31 KiB, what the agent's
// runner reads at a time) streamed agent -> master.
func BenchmarkStream(b *testing.B) {
	m, a := benchPair(b)
	frame := make([]byte, 31<<10)
	b.SetBytes(int64(len(frame)))
	done := make(chan error, 1)
	go func() {
		for range b.N {
			if _, err := m.Recv(); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for b.Loop() {
		if err := a.Send(frame); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRoundTrip measures a small frame master -> agent -> master.
func BenchmarkRoundTrip(b *testing.B) {
	m, a := benchPair(b)
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
