package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Role is what an API token may do. Each role may do what the ones before
// it may.
type Role string

// The roles, least to most.
const (
	// RoleRead reads nodes, jobs, builds, logs, artifacts, plugins and
	// metrics.
	RoleRead Role = "read"
	// RoleTrigger also triggers and cancels builds.
	RoleTrigger Role = "trigger"
	// RoleAdmin also reads node secrets, deletes nodes and manages tokens.
	RoleAdmin Role = "admin"
)

// Roles lists the roles, least to most.
var Roles = []Role{RoleRead, RoleTrigger, RoleAdmin}

// rank orders the roles; 0 is no role.
func (r Role) rank() int {
	for i, x := range Roles {
		if r == x {
			return i + 1
		}
	}
	return 0
}

// Allows reports whether r may do what min may.
func (r Role) Allows(min Role) bool { return r.rank() > 0 && r.rank() >= min.rank() }

// ParseRole returns the role named s.
func ParseRole(s string) (Role, error) {
	if r := Role(s); r.rank() > 0 {
		return r, nil
	}
	names := make([]string, len(Roles))
	for i, r := range Roles {
		names[i] = string(r)
	}
	return "", fmt.Errorf("no role %q: use one of %s", s, strings.Join(names, ", "))
}

// Token is an API token the server issued: only the SHA-256 of its secret
// is kept.
type Token struct {
	// ID identifies the token in UI session cookies: a new token under a
	// revoked one's name does not bring its sessions back.
	ID string `json:"id"`
	// Name is unique among the tokens, chosen by the one who created it.
	Name string `json:"name"`
	Role Role   `json:"role"`
	// SHA256 is the hex SHA-256 of the token.
	SHA256    string    `json:"sha256,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// Token errors.
var (
	ErrTokenNotFound = errors.New("no such token")
	ErrTokenExists   = errors.New("a token of that name exists")
)

var bucketTokens = []byte("tokens")

// CreateToken stores t, whose name must be new.
func (s *Store) CreateToken(t Token) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketTokens)
		if err != nil {
			return err
		}
		if b.Get([]byte(t.Name)) != nil {
			return fmt.Errorf("%w: %s", ErrTokenExists, t.Name)
		}
		v, err := json.Marshal(t)
		if err != nil {
			return err
		}
		return b.Put([]byte(t.Name), v)
	})
}

// Tokens lists the tokens by name.
func (s *Store) Tokens() ([]Token, error) {
	var out []Token
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var t Token
			if err := json.Unmarshal(v, &t); err != nil {
				return err
			}
			out = append(out, t)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// RevokeToken deletes the token named name and returns it.
func (s *Store) RevokeToken(name string) (Token, error) {
	var t Token
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		var v []byte
		if b != nil {
			v = b.Get([]byte(name))
		}
		if v == nil {
			return fmt.Errorf("%w: %s", ErrTokenNotFound, name)
		}
		if err := json.Unmarshal(v, &t); err != nil {
			return err
		}
		return b.Delete([]byte(name))
	})
	return t, err
}
