package session

import "sync"

// maxOwnedSessions is how many session ids the owners registry keeps per
// node, newest last.
const maxOwnedSessions = 64

// owners maps the session ids of every node this master process served
// to their node, so that a link can tell a frame of another node's
// session (copied into its node's topic: forged) from a leftover of its
// own node's earlier sessions (stale).
var owners = &sessionOwners{node: map[uint64]string{}, ids: map[string][]uint64{}}

// sessionOwners is a bounded registry of session ids by node: the last
// maxOwnedSessions ids of each node.
type sessionOwners struct {
	mu   sync.Mutex
	node map[uint64]string   // session id -> node
	ids  map[string][]uint64 // node -> its ids, oldest first
}

// add records session id as node's.
func (o *sessionOwners) add(node string, id uint64) {
	if id == 0 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if owner, ok := o.node[id]; ok && owner == node {
		return
	}
	o.node[id] = node
	ids := append(o.ids[node], id)
	if len(ids) > maxOwnedSessions {
		for _, old := range ids[:len(ids)-maxOwnedSessions] {
			if o.node[old] == node {
				delete(o.node, old)
			}
		}
		ids = append([]uint64(nil), ids[len(ids)-maxOwnedSessions:]...)
	}
	o.ids[node] = ids
}

// owner is the node session id belongs to, "" when unknown.
func (o *sessionOwners) owner(id uint64) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.node[id]
}

// otherNode reports the node other than node whose session id is, "" when
// id is node's own or unknown.
func (o *sessionOwners) otherNode(node string, id uint64) string {
	if owner := o.owner(id); owner != node {
		return owner
	}
	return ""
}
