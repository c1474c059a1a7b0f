package session

import (
	"maps"
	"sync"

	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// What the agent reports of the frames it dropped (wire.Stats, sent with
// its heartbeats to a master announcing wire.FeatureStats): forged,
// replayed, malformed, duplicate, stale, unexpected frames, the unsigned
// hints it got, and what its transport dropped before decoding
// ("transport_malformed"). They are signed like every frame of the
// session, so the master shows tampering on the agent's side too.

// maxAgentCounters and maxCounterName bound what a Stats frame may make
// the master keep (and export as metric labels).
const (
	maxAgentCounters = 32
	maxCounterName   = 64
)

type agentCounters struct {
	mu sync.Mutex
	c  map[string]uint64
}

// agentStats records the counters of the agent's last Stats.
func (s *Session) agentStats(m *wire.Stats) {
	c := make(map[string]uint64, len(m.Counters))
	for _, v := range m.Counters {
		if len(c) == maxAgentCounters {
			break
		}
		if v.Name == "" || len(v.Name) > maxCounterName {
			continue
		}
		c[v.Name] = v.Value
	}
	s.agent.mu.Lock()
	s.agent.c = c
	s.agent.mu.Unlock()
}

// AgentCounters reports what the agent said it dropped, by reason, as of
// its last heartbeat (nil before it reported anything: an older agent, or
// none connected yet). The counts start at zero when the agent starts.
func (s *Session) AgentCounters() map[string]uint64 {
	s.agent.mu.Lock()
	defer s.agent.mu.Unlock()
	return maps.Clone(s.agent.c)
}
