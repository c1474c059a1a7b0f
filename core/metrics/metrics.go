// Package metrics exports the master's state in the Prometheus text
// format: builds by result, the queue and its wait time, node states,
// frames and bytes per transport, rejected frames by reason and plugin
// restarts. Build events are counted as they happen (Observer); the rest
// is read from its owners at each scrape, so nothing is counted twice.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/session"
)

// Namespace prefixes every metric.
const Namespace = "conveyor"

// NodeStates are the states a node's state gauge reports, one series each.
var NodeStates = []string{nodes.StateOffline, nodes.StateLaunching, nodes.StateOnline, nodes.StateUnreachable}

// Node is what the metrics read of one node.
type Node interface {
	Status() nodes.Status
	Traffic() session.Traffic
}

// Plugin is what the metrics read of one launcher plugin.
type Plugin struct {
	Name     string
	Restarts int
	Running  bool
}

// Sources are read at every scrape.
type Sources struct {
	// Nodes returns the configured nodes.
	Nodes func() []Node
	// Queued returns how many builds wait for an executor.
	Queued func() int
	// Plugins returns the loaded plugins.
	Plugins func() []Plugin
	// LinkMalformed returns, by node, what the launchers' transports
	// dropped before decoding any frame (nodes.Manager.LinkMalformed).
	LinkMalformed func() map[string]uint64
}

// Metrics is the master's registry; it implements builds.Observer.
type Metrics struct {
	reg      *prometheus.Registry
	builds   *prometheus.CounterVec
	started  *prometheus.CounterVec
	wait     *prometheus.HistogramVec
	writes   *prometheus.CounterVec
	authFail *prometheus.CounterVec
	reloads  *prometheus.CounterVec
	handler  http.Handler
	snapshot *snapshot
}

// New registers the master's metrics, reading state from src.
func New(src Sources) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.builds = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "builds_finished_total",
		Help: "Builds finished, by job and result (success, failure, cancelled, timeout).",
	}, []string{"job", "result"})
	m.started = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "builds_started_total",
		Help: "Builds that left the queue and started on a node, by job.",
	}, []string{"job"})
	m.wait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "queue_wait_seconds",
		Help:    "How long builds waited in the queue before starting, by job.",
		Buckets: []float64{.005, .025, .1, .5, 1, 5, 15, 60, 300, 900, 3600},
	}, []string{"job"})
	m.writes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "storage_write_errors_total",
		Help: "Failed attempts to write to the master's storage, by kind: log (a build log), artifact, checkpoint (an agent session's), store (a build's record). A refused write of an agent's data is retried (docs/sessions.md).",
	}, []string{"kind"})
	for _, k := range []string{session.KindLog, session.KindArtifact, session.KindCheckpoint, session.KindStore} {
		m.writes.WithLabelValues(k)
	}
	m.authFail = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "auth_failures_total",
		Help: "API and UI sign-in requests refused for their token, by surface (api, ui) and reason (invalid_token; rate_limited: refused unchecked, the address sent too many wrong tokens).",
	}, []string{"surface", "reason"})
	for _, surface := range []string{"api", "ui"} {
		for _, reason := range []string{"invalid_token", "rate_limited"} {
			m.authFail.WithLabelValues(surface, reason)
		}
	}
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "config_reloads_total",
		Help: "Configuration reloads (SIGHUP, conveyor reload), by result: success (the new configuration was applied, some changes may wait for running builds), failure (it was refused and nothing changed).",
	}, []string{"result"})
	for _, r := range []string{ReloadSuccess, ReloadFailure} {
		m.reloads.WithLabelValues(r)
	}
	m.snapshot = &snapshot{src: src}
	m.reg.MustRegister(m.builds, m.started, m.wait, m.writes, m.authFail, m.reloads, m.snapshot,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
	return m
}

// Started implements builds.Observer.
func (m *Metrics) Started(job string, waited time.Duration) {
	m.started.WithLabelValues(job).Inc()
	m.wait.WithLabelValues(job).Observe(waited.Seconds())
}

// Finished implements builds.Observer.
func (m *Metrics) Finished(job, status string) { m.builds.WithLabelValues(job, status).Inc() }

// WriteFailed implements builds.Observer; it counts session write errors
// too (nodes.Options.OnWriteError).
func (m *Metrics) WriteFailed(kind string) { m.writes.WithLabelValues(kind).Inc() }

// AuthFailure counts a request refused for its token: surface is "api" or
// "ui", reason "invalid_token" or "rate_limited".
func (m *Metrics) AuthFailure(surface, reason string) {
	m.authFail.WithLabelValues(surface, reason).Inc()
}

// Results of a configuration reload (the result label of
// conveyor_config_reloads_total).
const (
	ReloadSuccess = "success"
	ReloadFailure = "failure"
)

// Reloaded counts a configuration reload with its result (ReloadSuccess
// or ReloadFailure).
func (m *Metrics) Reloaded(result string) { m.reloads.WithLabelValues(result).Inc() }

// ServeHTTP serves the metrics in the Prometheus text format.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) { m.handler.ServeHTTP(w, r) }

// Registry is the registry behind the handler.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

var (
	descQueue = prometheus.NewDesc(Namespace+"_queue_length",
		"Builds waiting in the queue for a free executor.", nil, nil)
	descNodeState = prometheus.NewDesc(Namespace+"_node_state",
		"1 for the state each node is in, 0 for the others.", []string{"node", "launcher", "state"}, nil)
	descNodes = prometheus.NewDesc(Namespace+"_nodes",
		"Nodes in each state.", []string{"state"}, nil)
	descBusy = prometheus.NewDesc(Namespace+"_node_executors_busy",
		"Executors of the node running a build.", []string{"node"}, nil)
	descExecutors = prometheus.NewDesc(Namespace+"_node_executors",
		"Executors of the node.", []string{"node"}, nil)
	descFrames = prometheus.NewDesc(Namespace+"_transport_frames_total",
		"Wire frames between the master and agents, by launcher, node and direction (in: from the agent).", []string{"launcher", "node", "direction"}, nil)
	descBytes = prometheus.NewDesc(Namespace+"_transport_bytes_total",
		"Bytes of wire frames between the master and agents, by launcher, node and direction.", []string{"launcher", "node", "direction"}, nil)
	descConnections = prometheus.NewDesc(Namespace+"_transport_connections_total",
		"Connections the master attached to serve the node's agent session.", []string{"launcher", "node"}, nil)
	descResumes = prometheus.NewDesc(Namespace+"_transport_resumes_total",
		"Agent sessions resumed after a broken link.", []string{"launcher", "node"}, nil)
	descRTT = prometheus.NewDesc(Namespace+"_transport_rtt_seconds",
		"Round-trip time of the node's last answered heartbeat.", []string{"launcher", "node"}, nil)
	descHeard = prometheus.NewDesc(Namespace+"_transport_last_heard_timestamp_seconds",
		"When the node's agent was last heard (Unix time).", []string{"launcher", "node"}, nil)
	descRejected = prometheus.NewDesc(Namespace+"_rejected_frames_total",
		"Frames from agents dropped and never acted on, by node and reason.", []string{"node", "reason"}, nil)
	descAgentRejected = prometheus.NewDesc(Namespace+"_agent_rejected_frames_total",
		"Frames the node's agent dropped and never acted on, by reason, as it reports them with its heartbeats (forged, replayed, malformed, duplicate, stale, unexpected; hint: unsigned hints of a master without the session's key; transport_malformed: records its transport dropped). They restart from zero when the agent restarts.", []string{"node", "reason"}, nil)
	descTransportMalformed = prometheus.NewDesc(Namespace+"_transport_malformed_total",
		"Records the launcher's transport dropped for the node before decoding any frame (a Kafka record or a partial frame that did not reassemble), as the launcher reports it.", []string{"node"}, nil)
	descRestarts = prometheus.NewDesc(Namespace+"_plugin_restarts_total",
		"Restarts of each launcher plugin after it exited.", []string{"plugin"}, nil)
	descPluginUp = prometheus.NewDesc(Namespace+"_plugin_up",
		"1 when the launcher plugin's process runs.", []string{"plugin"}, nil)
)

// snapshot collects the state read from Sources at each scrape.
type snapshot struct{ src Sources }

// Describe implements prometheus.Collector.
func (c *snapshot) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQueue, descNodeState, descNodes, descBusy, descExecutors, descFrames, descBytes,
		descConnections, descResumes, descRTT, descHeard, descRejected, descAgentRejected, descTransportMalformed, descRestarts, descPluginUp} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *snapshot) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	if c.src.Queued != nil {
		gauge(descQueue, float64(c.src.Queued()))
	}
	if c.src.Nodes != nil {
		count := map[string]int{}
		for _, n := range c.src.Nodes() {
			st, t := n.Status(), n.Traffic()
			count[st.State]++
			for _, s := range NodeStates {
				gauge(descNodeState, b2f(st.State == s), st.Name, st.Launcher, s)
			}
			gauge(descBusy, float64(st.Busy), st.Name)
			gauge(descExecutors, float64(st.Executors), st.Name)
			counter(descFrames, t.FramesIn, st.Launcher, st.Name, "in")
			counter(descFrames, t.FramesOut, st.Launcher, st.Name, "out")
			counter(descBytes, t.BytesIn, st.Launcher, st.Name, "in")
			counter(descBytes, t.BytesOut, st.Launcher, st.Name, "out")
			counter(descConnections, t.Connections, st.Launcher, st.Name)
			counter(descResumes, t.Resumes, st.Launcher, st.Name)
			if t.RTT > 0 {
				gauge(descRTT, t.RTT.Seconds(), st.Launcher, st.Name)
			}
			if !t.LastHeard.IsZero() {
				gauge(descHeard, float64(t.LastHeard.UnixNano())/1e9, st.Launcher, st.Name)
			}
			var d session.Counters
			if st.Dropped != nil {
				d = *st.Dropped
			}
			for _, r := range []struct {
				reason string
				n      uint64
			}{{"stale", d.Stale}, {"malformed", d.Malformed}, {"unexpected", d.Unexpect}, {"forged", d.Forged},
				{"replayed", d.Replayed}, {"duplicate", d.Duplicate}, {"early", d.Early}} {
				counter(descRejected, r.n, st.Name, r.reason)
			}
			for reason, n := range st.AgentDropped {
				counter(descAgentRejected, n, st.Name, reason)
			}
		}
		for _, s := range NodeStates {
			gauge(descNodes, float64(count[s]), s)
		}
	}
	if c.src.LinkMalformed != nil {
		for node, n := range c.src.LinkMalformed() {
			counter(descTransportMalformed, n, node)
		}
	}
	if c.src.Plugins != nil {
		for _, p := range c.src.Plugins() {
			counter(descRestarts, uint64(p.Restarts), p.Name)
			gauge(descPluginUp, b2f(p.Running), p.Name)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
