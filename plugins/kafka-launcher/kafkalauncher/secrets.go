package kafkalauncher

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// MasterKeySize is the size of the master key the node secrets derive from.
const MasterKeySize = 32

// MasterKeyFile is the master key's file name in the plugin's data directory.
const MasterKeyFile = "master.key"

// loadOrCreateKey returns the master key in dir, creating it (mode 0600)
// if there is none. A key file readable by others, or of the wrong size,
// is refused.
func loadOrCreateKey(dir string) ([]byte, error) {
	path := filepath.Join(dir, MasterKeyFile)
	key, err := readKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory %s: %w", dir, err)
	}
	key = make([]byte, MasterKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generate master key: %w", err)
	}
	// Write aside, then link into place: a crash never leaves a short key,
	// and a key created meanwhile by someone else wins.
	tmp, err := os.CreateTemp(dir, ".master.key-*")
	if err != nil {
		return nil, fmt.Errorf("create master key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("create master key: %w", err)
	}
	if _, err := tmp.Write(key); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("write master key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("write master key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("write master key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("install master key %s: %w", path, err)
	}
	return readKey(path)
}

// readKey reads and checks the key file.
func readKey(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("master key: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("master key %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("master key %s has mode %04o: it must not be accessible to group or others (chmod 600 %s)", path, perm, path)
	}
	if st.Size() != MasterKeySize {
		return nil, fmt.Errorf("master key %s is %d bytes, want %d: restore it from a backup or remove it to create a new one (every agent's secret then changes)", path, st.Size(), MasterKeySize)
	}
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("master key: %w", err)
	}
	if len(key) != MasterKeySize {
		return nil, fmt.Errorf("master key %s is %d bytes, want %d", path, len(key), MasterKeySize)
	}
	return key, nil
}

// nodeSecret derives a node's secret: HMAC-SHA256(key, node name).
func nodeSecret(key []byte, node string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(node))
	return m.Sum(nil)
}
