package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrNodeNotFound is returned for a node the server never had.
var ErrNodeNotFound = errors.New("node not known")

// NodeRecord remembers a node the server ran with, so that its launcher can
// still be asked to purge it after its block left the configuration.
type NodeRecord struct {
	Name      string    `json:"name"`
	Launcher  string    `json:"launcher"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
}

// RecordNodes upserts the records of the configured nodes, keeping each
// one's FirstSeen.
func (s *Store) RecordNodes(recs []NodeRecord, now time.Time) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketNodes)
		for _, r := range recs {
			if old := b.Get([]byte(r.Name)); old != nil {
				var prev NodeRecord
				if err := json.Unmarshal(old, &prev); err == nil {
					r.FirstSeen = prev.FirstSeen
				}
			}
			if r.FirstSeen.IsZero() {
				r.FirstSeen = now
			}
			r.LastSeen = now
			v, err := json.Marshal(r)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(r.Name), v); err != nil {
				return fmt.Errorf("record node %q: %w", r.Name, err)
			}
		}
		return nil
	})
}

// Node returns a node's record, or ErrNodeNotFound.
func (s *Store) Node(name string) (*NodeRecord, error) {
	var r *NodeRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketNodes).Get([]byte(name))
		if v == nil {
			return fmt.Errorf("%w: %s", ErrNodeNotFound, name)
		}
		r = new(NodeRecord)
		return json.Unmarshal(v, r)
	})
	return r, err
}

// Nodes lists every node record by name.
func (s *Store) Nodes() ([]NodeRecord, error) {
	var out []NodeRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketNodes).ForEach(func(_, v []byte) error {
			var r NodeRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, r)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// ForgetNode deletes a node's record; forgetting an unknown node is no error.
func (s *Store) ForgetNode(name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketNodes).Delete([]byte(name))
	})
}
