// Package store keeps build history and logs in the server's data
// directory: build records in an embedded bbolt database (fsynced on every
// commit) and each build's log in a file of its own.
package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Build statuses.
const (
	StatusQueued    = "queued"
	StatusRunning   = "running"
	StatusSuccess   = "success"
	StatusFailure   = "failure"
	StatusCancelled = "cancelled"
	StatusTimeout   = "timeout"
)

// Finished reports whether status is final.
func Finished(status string) bool {
	switch status {
	case StatusSuccess, StatusFailure, StatusCancelled, StatusTimeout:
		return true
	}
	return false
}

// Build is one run of a job.
type Build struct {
	Job        string            `json:"job"`
	Number     int               `json:"number"`
	Status     string            `json:"status"`
	Reason     string            `json:"reason,omitempty"`
	Node       string            `json:"node,omitempty"`
	Params     map[string]string `json:"params,omitempty"`
	QueuedAt   time.Time         `json:"queued_at"`
	StartedAt  *time.Time        `json:"started_at,omitempty"`
	FinishedAt *time.Time        `json:"finished_at,omitempty"`
	Steps      []Step            `json:"steps"`
	// LogSize is the log's length in bytes once the build finished.
	LogSize int64 `json:"log_size"`
	// Artifacts are the files the build archived (its job's artifacts
	// patterns), in path order; their content is under ArtifactsDir.
	Artifacts []Artifact `json:"artifacts,omitempty"`
}

// Step is the result of one step of a build.
type Step struct {
	Name       string     `json:"name"`
	Status     string     `json:"status"`
	ExitCode   *int       `json:"exit_code,omitempty"`
	Error      string     `json:"error,omitempty"`
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	// LogOffset is where the step's output starts in the build log.
	LogOffset int64 `json:"log_offset"`
}

// ErrNotFound is returned for a build that does not exist.
var ErrNotFound = errors.New("build not found")

var (
	bucketBuilds   = []byte("builds")
	bucketCounters = []byte("counters")
	bucketNodes    = []byte("nodes")
	bucketSessions = []byte("sessions")
	// bucketNodeControl holds one bucket per node: what operators did to
	// it (control.go).
	bucketNodeControl = []byte("node_control")
)

// Store is the build database and log directory.
type Store struct {
	db      *bolt.DB
	logsDir string
}

// Open opens (creating) the store under dir.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	db, err := bolt.Open(filepath.Join(dir, "builds.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketBuilds, bucketCounters, bucketNodes, bucketSessions, bucketNodeControl} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	return &Store{db: db, logsDir: filepath.Join(dir, "logs")}, nil
}

// ErrClosed is what the store's operations return once it is closed.
var ErrClosed = bolt.ErrDatabaseNotOpen

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

func buildKey(job string, n int) []byte {
	k := make([]byte, 0, len(job)+9)
	k = append(k, job...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, uint64(n))
}

// Create numbers a new build of b.Job (one more than the last) and stores it.
func (s *Store) Create(b *Build) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketCounters)
		var n uint64
		if v := c.Get([]byte(b.Job)); v != nil {
			n = binary.BigEndian.Uint64(v)
		}
		n++
		if err := c.Put([]byte(b.Job), binary.BigEndian.AppendUint64(nil, n)); err != nil {
			return err
		}
		b.Number = int(n)
		return put(tx, b)
	})
}

// Save stores b, replacing the previous record.
func (s *Store) Save(b *Build) error {
	return s.db.Update(func(tx *bolt.Tx) error { return put(tx, b) })
}

func put(tx *bolt.Tx, b *Build) error {
	v, err := json.Marshal(b)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketBuilds).Put(buildKey(b.Job, b.Number), v)
}

// Get returns build n of job.
func (s *Store) Get(job string, n int) (*Build, error) {
	var b *Build
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketBuilds).Get(buildKey(job, n))
		if v == nil {
			return ErrNotFound
		}
		b = new(Build)
		return json.Unmarshal(v, b)
	})
	if err != nil {
		return nil, fmt.Errorf("build %s#%d: %w", job, n, err)
	}
	return b, nil
}

// List returns up to limit builds of job, newest first (limit <= 0: all).
func (s *Store) List(job string, limit int) ([]*Build, error) {
	var out []*Build
	prefix := append([]byte(job), 0)
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketBuilds).Cursor()
		// Seek past the job's last key, then walk back.
		k, v := c.Seek(append(append([]byte(nil), job...), 1))
		if k == nil {
			k, v = c.Last()
		} else {
			k, v = c.Prev()
		}
		for ; k != nil && len(k) == len(prefix)+8 && string(k[:len(prefix)]) == string(prefix); k, v = c.Prev() {
			b := new(Build)
			if err := json.Unmarshal(v, b); err != nil {
				return err
			}
			out = append(out, b)
			if limit > 0 && len(out) == limit {
				break
			}
		}
		return nil
	})
	return out, err
}

// Unfinished returns every build that is queued or running.
func (s *Store) Unfinished() ([]*Build, error) {
	var out []*Build
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBuilds).ForEach(func(_, v []byte) error {
			b := new(Build)
			if err := json.Unmarshal(v, b); err != nil {
				return err
			}
			if !Finished(b.Status) {
				out = append(out, b)
			}
			return nil
		})
	})
	return out, err
}

// LogPath is the file holding build n of job's log.
func (s *Store) LogPath(job string, n int) string {
	return filepath.Join(s.logsDir, job, fmt.Sprintf("%d.log", n))
}
