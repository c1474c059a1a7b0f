package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/session"
)

type fakeNode struct {
	st nodes.Status
	t  session.Traffic
}

func (f fakeNode) Status() nodes.Status     { return f.st }
func (f fakeNode) Traffic() session.Traffic { return f.t }

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("status %d", rec.Code)
	}
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

func TestMetrics(t *testing.T) {
	queued := 3
	heard := time.Unix(1700000000, 0)
	src := Sources{
		Nodes: func() []Node {
			return []Node{
				fakeNode{st: nodes.Status{Name: "k1", Launcher: "kafka", State: nodes.StateOnline, Executors: 2, Busy: 1,
					Dropped: &session.Counters{Forged: 4, Stale: 1}},
					t: session.Traffic{FramesIn: 10, BytesIn: 1000, FramesOut: 7, BytesOut: 300, Connections: 2, Resumes: 1, LastHeard: heard, RTT: 1500 * time.Microsecond}},
				fakeNode{st: nodes.Status{Name: "s1", Launcher: "ssh", State: nodes.StateOffline, Executors: 1}},
			}
		},
		Queued:  func() int { return queued },
		Plugins: func() []Plugin { return []Plugin{{Name: "kafka", Restarts: 2, Running: true}} },
	}
	m := New(src)
	m.Started("hello", 2*time.Second)
	m.Finished("hello", "success")
	m.Finished("hello", "success")
	m.Finished("fails", "failure")
	m.WriteFailed(session.KindLog)
	m.WriteFailed(session.KindLog)
	m.WriteFailed(session.KindCheckpoint)
	out := scrape(t, m)
	for _, want := range []string{
		`conveyor_builds_finished_total{job="hello",result="success"} 2`,
		`conveyor_builds_finished_total{job="fails",result="failure"} 1`,
		`conveyor_builds_started_total{job="hello"} 1`,
		`conveyor_queue_wait_seconds_count{job="hello"} 1`,
		`conveyor_queue_wait_seconds_sum{job="hello"} 2`,
		`conveyor_queue_length 3`,
		`conveyor_node_state{launcher="kafka",node="k1",state="online"} 1`,
		`conveyor_node_state{launcher="kafka",node="k1",state="offline"} 0`,
		`conveyor_node_state{launcher="ssh",node="s1",state="offline"} 1`,
		`conveyor_nodes{state="online"} 1`,
		`conveyor_nodes{state="unreachable"} 0`,
		`conveyor_node_executors_busy{node="k1"} 1`,
		`conveyor_transport_frames_total{direction="in",launcher="kafka",node="k1"} 10`,
		`conveyor_transport_frames_total{direction="out",launcher="kafka",node="k1"} 7`,
		`conveyor_transport_bytes_total{direction="in",launcher="kafka",node="k1"} 1000`,
		`conveyor_transport_bytes_total{direction="out",launcher="kafka",node="k1"} 300`,
		`conveyor_transport_connections_total{launcher="kafka",node="k1"} 2`,
		`conveyor_transport_resumes_total{launcher="kafka",node="k1"} 1`,
		`conveyor_transport_rtt_seconds{launcher="kafka",node="k1"} 0.0015`,
		`conveyor_transport_last_heard_timestamp_seconds{launcher="kafka",node="k1"} 1.7e+09`,
		`conveyor_rejected_frames_total{node="k1",reason="forged"} 4`,
		`conveyor_rejected_frames_total{node="k1",reason="stale"} 1`,
		`conveyor_rejected_frames_total{node="s1",reason="forged"} 0`,
		`conveyor_plugin_restarts_total{plugin="kafka"} 2`,
		`conveyor_storage_write_errors_total{kind="log"} 2`,
		`conveyor_storage_write_errors_total{kind="checkpoint"} 1`,
		`conveyor_storage_write_errors_total{kind="artifact"} 0`,
		`conveyor_storage_write_errors_total{kind="store"} 0`,
		`conveyor_plugin_up{plugin="kafka"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(out, want+"\n") && !strings.Contains(out, want+" ") {
			t.Errorf("missing %s", want)
		}
	}
	// A node never heard has no RTT nor last-heard series.
	if strings.Contains(out, `conveyor_transport_rtt_seconds{launcher="ssh"`) {
		t.Error("RTT reported for a node that never answered")
	}
	// Read at scrape time: the queue gauge follows.
	queued = 0
	if out := scrape(t, m); !strings.Contains(out, "conveyor_queue_length 0\n") {
		t.Error("queue length not read again at the next scrape")
	}
}
