package session

import "slices"

// maxHadSessions is how many session ids an agent remembers, newest last.
const maxHadSessions = 64

// remember records id as a session this agent had: established, or
// offered by a master that proved the secret.
func (a *Agent) remember(id uint64) {
	if id == 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if slices.Contains(a.had, id) {
		return
	}
	a.had = append(a.had, id)
	if len(a.had) > maxHadSessions {
		a.had = slices.Delete(a.had, 0, len(a.had)-maxHadSessions)
	}
}

// hadSession reports whether id is a session this agent had (see
// remember).
func (a *Agent) hadSession(id uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Contains(a.had, id)
}
