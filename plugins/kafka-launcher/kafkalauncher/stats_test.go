package kafkalauncher

import (
	"fmt"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// TestLinkStats checks, through the plugin process, that a node's link
// reports its topics, its connection and the agent's lag: frames the
// master sent that no agent consumed yet.
func TestLinkStats(t *testing.T) {
	dir := t.TempDir()
	p := startPlugin(t)
	if !p.Info.Has(launcher.CapStats) {
		t.Fatalf("capabilities %v lack %q", p.Info.Capabilities, launcher.CapStats)
	}
	addr := freeAddr(t)
	cfg := config(t, dir, fmt.Sprintf("embedded_addr = %q", addr), "a")
	if err := p.Launcher.Configure(ctxT(t), cfg); err != nil {
		t.Fatal(err)
	}
	ls := p.Launcher.(launcher.LinkStater)
	st, err := ls.LinkStats(ctxT(t), "a")
	if err != nil {
		t.Fatal(err)
	}
	if st.Connected || !st.Since.IsZero() || len(st.Topics) != 2 {
		t.Fatalf("before launch: %+v", st)
	}
	node := cfg.Nodes[0]
	conn, err := p.Launcher.Launch(ctxT(t), node)
	if err != nil {
		t.Fatal(err)
	}
	const frames = 3
	for i := range frames {
		if err := conn.Send(fmt.Appendf(nil, "frame %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	// Send returns once the frame is on its way to the plugin: wait for
	// the broker to have all three.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if st, err = ls.LinkStats(ctxT(t), "a"); err != nil {
			t.Fatal(err)
		}
		if lag(st, launcher.ToAgent) == frames || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !st.Connected || st.Since.IsZero() || st.Reconnects != 0 || st.Endpoint == "" {
		t.Fatalf("after launch: %+v", st)
	}
	want := map[string]launcher.TopicStats{
		launcher.ToAgent:  {Name: "conveyor.a.commands", Direction: launcher.ToAgent, Group: "conveyor.agent.a", Lag: frames},
		launcher.ToMaster: {Name: "conveyor.a.events", Direction: launcher.ToMaster, Group: "conveyor.master.a", Lag: 0},
	}
	for _, ts := range st.Topics {
		if ts != want[ts.Direction] {
			t.Errorf("topic %+v, want %+v", ts, want[ts.Direction])
		}
	}
	// A record in the events topic that is no frame's chunk: the master's
	// transport drops it, and the link stats count it.
	go func() {
		for {
			if _, err := conn.Recv(); err != nil {
				return
			}
		}
	}()
	sc := sarama.NewConfig()
	sc.Producer.Return.Successes = true
	sc.Producer.Partitioner = sarama.NewManualPartitioner
	prod, err := sarama.NewSyncProducer([]string{addr}, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	if _, _, err := prod.SendMessage(&sarama.ProducerMessage{Topic: "conveyor.a.events", Partition: 0, Value: sarama.StringEncoder("x")}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		if st, err = ls.LinkStats(ctxT(t), "a"); err != nil {
			t.Fatal(err)
		}
		if st.Malformed == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("link stats %+v: want the malformed record counted", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = conn.Close()
	conn, err = p.Launcher.Launch(ctxT(t), node)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if st, err = ls.LinkStats(ctxT(t), "a"); err != nil || st.Reconnects != 1 || st.Malformed != 1 {
		t.Fatalf("after a relaunch: %+v, %v; want 1 reconnect, the malformed record still counted", st, err)
	}
}

// lag is the lag of st's topic in direction dir, -2 when there is none.
func lag(st *launcher.LinkStats, dir string) int64 {
	for _, ts := range st.Topics {
		if ts.Direction == dir {
			return ts.Lag
		}
	}
	return -2
}
