package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// NodeEvent is one entry of a node's history: what an operator (or the
// master on its own, By "conveyor") did to the node.
type NodeEvent struct {
	Time time.Time `json:"time"`
	// Action is what was done: drain, online, disconnect, launch,
	// approve-key, key-pending, idle-offline, demand-launch.
	Action string `json:"action"`
	// By names the API token (or the UI session's token) that did it.
	By string `json:"by"`
	// Reason is what the operator wrote, or what happened.
	Reason string `json:"reason,omitempty"`
}

// NodeDrain says that a node takes no new build, since when, why and on
// whose word.
type NodeDrain struct {
	Since  time.Time `json:"since"`
	By     string    `json:"by"`
	Reason string    `json:"reason,omitempty"`
}

// MaxNodeEvents bounds each node's history: older entries are dropped.
const MaxNodeEvents = 200

var (
	keyDrain        = []byte("drain")
	keyApprovedKeys = []byte("approved_keys")
	bucketEvents    = []byte("events")
)

// nodeControl returns node's bucket, created when create is set (nil when
// absent and not created).
func nodeControl(tx *bolt.Tx, node string, create bool) (*bolt.Bucket, error) {
	root := tx.Bucket(bucketNodeControl)
	if !create {
		return root.Bucket([]byte(node)), nil
	}
	b, err := root.CreateBucketIfNotExists([]byte(node))
	if err != nil {
		return nil, fmt.Errorf("node %q control: %w", node, err)
	}
	return b, nil
}

// AddNodeEvent appends ev to node's history, keeping the last
// MaxNodeEvents.
func (s *Store) AddNodeEvent(node string, ev NodeEvent) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := nodeControl(tx, node, true)
		if err != nil {
			return err
		}
		return addEvent(b, ev)
	})
}

func addEvent(b *bolt.Bucket, ev NodeEvent) error {
	evs, err := b.CreateBucketIfNotExists(bucketEvents)
	if err != nil {
		return err
	}
	seq, err := evs.NextSequence()
	if err != nil {
		return err
	}
	v, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	if err := evs.Put(k[:], v); err != nil {
		return err
	}
	if seq > MaxNodeEvents { // entries are added one by one: drop the one that fell out
		binary.BigEndian.PutUint64(k[:], seq-MaxNodeEvents)
		if err := evs.Delete(k[:]); err != nil {
			return err
		}
	}
	return nil
}

// NodeEvents returns node's history, oldest first.
func (s *Store) NodeEvents(node string) ([]NodeEvent, error) {
	out := []NodeEvent{}
	err := s.db.View(func(tx *bolt.Tx) error {
		b, _ := nodeControl(tx, node, false)
		if b == nil || b.Bucket(bucketEvents) == nil {
			return nil
		}
		return b.Bucket(bucketEvents).ForEach(func(_, v []byte) error {
			var ev NodeEvent
			if err := json.Unmarshal(v, &ev); err != nil {
				return fmt.Errorf("node %q history: %w", node, err)
			}
			out = append(out, ev)
			return nil
		})
	})
	return out, err
}

// SetNodeDrain records that node is drained (d set) or back online (d
// nil), with ev in its history, in one transaction.
func (s *Store) SetNodeDrain(node string, d *NodeDrain, ev NodeEvent) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := nodeControl(tx, node, true)
		if err != nil {
			return err
		}
		if d == nil {
			err = b.Delete(keyDrain)
		} else {
			var v []byte
			if v, err = json.Marshal(d); err == nil {
				err = b.Put(keyDrain, v)
			}
		}
		if err != nil {
			return fmt.Errorf("node %q drain: %w", node, err)
		}
		return addEvent(b, ev)
	})
}

// NodeDrain returns node's drain, or nil when it is not drained.
func (s *Store) NodeDrain(node string) (*NodeDrain, error) {
	var d *NodeDrain
	err := s.db.View(func(tx *bolt.Tx) error {
		b, _ := nodeControl(tx, node, false)
		if b == nil {
			return nil
		}
		v := b.Get(keyDrain)
		if v == nil {
			return nil
		}
		d = new(NodeDrain)
		return json.Unmarshal(v, d)
	})
	return d, err
}

// ApproveNodeKey adds fingerprint to node's approved host keys, with ev
// in its history, in one transaction. Approving a key twice is no error.
func (s *Store) ApproveNodeKey(node, fingerprint string, ev NodeEvent) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := nodeControl(tx, node, true)
		if err != nil {
			return err
		}
		keys, err := approvedKeys(b)
		if err != nil {
			return err
		}
		for _, k := range keys {
			if k == fingerprint {
				return addEvent(b, ev)
			}
		}
		v, err := json.Marshal(append(keys, fingerprint))
		if err != nil {
			return err
		}
		if err := b.Put(keyApprovedKeys, v); err != nil {
			return fmt.Errorf("node %q approved keys: %w", node, err)
		}
		return addEvent(b, ev)
	})
}

// NodeApprovedKeys returns the host key fingerprints approved for node.
func (s *Store) NodeApprovedKeys(node string) ([]string, error) {
	var keys []string
	err := s.db.View(func(tx *bolt.Tx) error {
		b, _ := nodeControl(tx, node, false)
		if b == nil {
			return nil
		}
		var err error
		keys, err = approvedKeys(b)
		return err
	})
	return keys, err
}

func approvedKeys(b *bolt.Bucket) ([]string, error) {
	v := b.Get(keyApprovedKeys)
	if v == nil {
		return nil, nil
	}
	var keys []string
	if err := json.Unmarshal(v, &keys); err != nil {
		return nil, fmt.Errorf("approved keys: %w", err)
	}
	return keys, nil
}
