package store

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// SaveSession stores the persisted agent session of a node (opaque to the
// store), replacing the previous one; nil deletes it. Each call is one
// durable transaction.
func (s *Store) SaveSession(node string, rec []byte) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSessions)
		if rec == nil {
			return b.Delete([]byte(node))
		}
		if err := b.Put([]byte(node), rec); err != nil {
			return fmt.Errorf("save session of node %q: %w", node, err)
		}
		return nil
	})
}

// Session returns the persisted session of a node, nil when there is none.
func (s *Store) Session(node string) ([]byte, error) {
	var rec []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketSessions).Get([]byte(node)); v != nil {
			rec = append([]byte(nil), v...)
		}
		return nil
	})
	return rec, err
}
