package server

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/conveyor-ci/conveyor/core/config"
)

// TokenFileName is the file under data_dir holding the API token the
// server generated, used when the configuration sets none.
const TokenFileName = "api-token"

// access is what a route asks of a request.
type access int

const (
	// open routes need no token (GET /healthz).
	open access = iota
	// read routes need the token unless server.api.public_read is set.
	read
	// write routes always need the token: they change something or, like
	// node secrets, give away what lets an agent in.
	write
)

// authenticator checks the bearer token of API requests.
type authenticator struct {
	// sum is the SHA-256 of the token: requests are compared against it
	// in constant time, whatever their length.
	sum        [sha256.Size]byte
	publicRead bool
}

func newAuthenticator(token string, publicRead bool) *authenticator {
	return &authenticator{sum: sha256.Sum256([]byte(token)), publicRead: publicRead}
}

// wrap guards h with the token check that level requires.
func (a *authenticator) wrap(level access, h http.HandlerFunc) http.HandlerFunc {
	if level == open {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if level == read && a.publicRead {
			h(w, r)
			return
		}
		switch tok, ok := bearer(r); {
		case !ok:
			w.Header().Set("WWW-Authenticate", `Bearer realm="conveyor"`)
			writeError(w, http.StatusUnauthorized, "this endpoint needs the API token: send it as \"Authorization: Bearer TOKEN\"")
		case !a.valid(tok):
			w.Header().Set("WWW-Authenticate", `Bearer realm="conveyor", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "wrong API token")
		default:
			h(w, r)
		}
	}
}

// valid compares tok with the token in constant time.
func (a *authenticator) valid(tok string) bool {
	sum := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(sum[:], a.sum[:]) == 1
}

// bearer returns the token of the request's Authorization header.
func bearer(r *http.Request) (string, bool) {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// apiToken returns the configured token, or else the one in
// data_dir/api-token, which it generates (32 random bytes, hex, mode 0600)
// when it does not exist yet. The file is refused when group or others may
// read or write it. source says where the token comes from, for the log;
// the token itself is never logged.
func apiToken(cfg config.Server) (token, source string, generated bool, err error) {
	if cfg.API.Token != "" {
		return cfg.API.Token, "the configuration (server.api.token)", false, nil
	}
	path := filepath.Join(cfg.DataDir, TokenFileName)
	token, err = readTokenFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		token, err = generateTokenFile(path)
		if errors.Is(err, fs.ErrExist) { // another server won the race
			token, err = readTokenFile(path)
		} else if err == nil {
			return token, path, true, nil
		}
	}
	if err != nil {
		return "", "", false, err
	}
	return token, path, false, nil
}

// readTokenFile reads a token file only its owner may read.
func readTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("API token: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("API token: %w", err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("API token: %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("API token: %s has mode %04o: group or others may access it; make it readable by its owner only (chmod 600 %s)", path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", fmt.Errorf("API token: read %s: %w", path, err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < config.MinAPITokenLength || strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("API token: %s must hold one token of at least %d characters (delete it to have a new one generated)", path, config.MinAPITokenLength)
	}
	return tok, nil
}

// generateTokenFile writes a new random token to path, which must not
// exist. It writes aside and links into place: a crash never leaves a
// partial token, and a token created meanwhile by someone else wins
// (fs.ErrExist).
func generateTokenFile(path string) (string, error) {
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("API token: %w", err)
	}
	tok := hex.EncodeToString(raw[:])
	tmp, err := os.CreateTemp(filepath.Dir(path), ".api-token-*")
	if err != nil {
		return "", fmt.Errorf("API token: %w", err)
	}
	defer os.Remove(tmp.Name())
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.WriteString(tok + "\n")
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("API token: write %s: %w", tmp.Name(), err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("API token: create %s: %w", path, err)
	}
	return tok, nil
}
