package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// Artifact is a file a build archived.
type Artifact struct {
	// Path is slash-separated and relative to the build's workspace.
	Path string `json:"path"`
	// Size is its length in bytes.
	Size int64 `json:"size"`
	// Mode holds its permission bits on the agent (0o755, say).
	Mode uint32 `json:"mode"`
	// SHA256 is the hex SHA-256 digest of its content.
	SHA256 string `json:"sha256"`
}

// ArtifactsDir is the directory holding build n of job's artifacts, next
// to its log.
func (s *Store) ArtifactsDir(job string, n int) string {
	return filepath.Join(s.logsDir, job, strconv.Itoa(n)+".artifacts")
}

// ErrBadArtifactPath reports an artifact path that is not a clean,
// relative, slash-separated path inside the artifacts directory.
var ErrBadArtifactPath = errors.New("artifact path must be a clean relative path")

// CheckArtifactPath reports whether p may name an artifact: a clean,
// relative, slash-separated path that stays inside its directory.
func CheckArtifactPath(p string) error {
	if p == "" || p != path.Clean(p) || !filepath.IsLocal(filepath.FromSlash(p)) || strings.ContainsRune(p, 0) {
		return fmt.Errorf("%q: %w", p, ErrBadArtifactPath)
	}
	return nil
}

// OpenArtifact opens the file of artifact p of build n of job, through an
// os.Root of the build's artifacts directory: nothing outside it can be
// reached.
func (s *Store) OpenArtifact(job string, n int, p string) (*os.File, error) {
	if err := CheckArtifactPath(p); err != nil {
		return nil, err
	}
	r, err := os.OpenRoot(s.ArtifactsDir(job, n))
	if err != nil {
		return nil, fmt.Errorf("open artifacts of %s#%d: %w", job, n, err)
	}
	defer r.Close()
	return r.Open(filepath.FromSlash(p))
}

// ArtifactWriter writes the files of a build's artifact transfer as they
// arrive, chunk after chunk, each file from offset 0 to its final chunk,
// and makes each durable (fsync) before it counts it. It is not safe for
// concurrent use.
type ArtifactWriter struct {
	dir  string
	root *os.Root
	dirs map[string]bool // directories created, to sync
	seen map[string]bool
	done []Artifact

	limit, total int64 // bytes the build's artifacts may take, and took

	cur  *os.File // the file being written
	name string
	// syncErr is the first failed sync: the kernel may have dropped the
	// pages it could not write, so a later sync succeeding would not make
	// them durable. Every later Chunk and Close fail with it.
	syncErr  error
	syncFile func(*os.File) error // (*os.File).Sync; tests make it fail
	mode     fs.FileMode
	size     int64
	sum      hash.Hash
}

// NewArtifactWriter starts the artifacts of build n of job afresh (what
// an earlier attempt left is removed); together they may take at most
// limit bytes.
func (s *Store) NewArtifactWriter(job string, n int, limit int64) (*ArtifactWriter, error) {
	dir := s.ArtifactsDir(job, n)
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("artifacts of %s#%d: %w", job, n, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("artifacts of %s#%d: %w", job, n, err)
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("artifacts of %s#%d: %w", job, n, err)
	}
	return &ArtifactWriter{dir: dir, root: r, dirs: map[string]bool{".": true}, seen: map[string]bool{}, limit: limit,
		syncFile: (*os.File).Sync}, nil
}

// Chunk writes data at offset of the file at p (slash-separated), whose
// permission bits on the agent are mode; final ends the file: it is
// synced and recorded. Files must come one after the other, each once,
// their chunks in order without gaps.
//
// A chunk is written whole or not at all: when the file system refuses it
// (the disk is full: "writing the artifact PATH: no space left on
// device"), what it took is cut off again and the same chunk may be
// written again later (the master's session retries it). A failed sync
// cannot be undone that way (the kernel may have dropped the pages it
// could not write): once one failed, every later Chunk and Close fail
// with its error ("syncing the artifact PATH: input/output error"), as a
// build log's Sync does.
func (w *ArtifactWriter) Chunk(p string, mode fs.FileMode, offset int64, data []byte, final bool) error {
	if w.syncErr != nil {
		return w.syncErr
	}
	if w.cur != nil && p != w.name {
		return fmt.Errorf("artifact %s: %s starts before its last chunk came", w.name, p)
	}
	if w.cur == nil {
		if err := w.open(p, mode, offset); err != nil {
			return err
		}
	}
	if offset != w.size {
		return fmt.Errorf("artifact %s: chunk at offset %d, want %d", p, offset, w.size)
	}
	if w.total+int64(len(data)) > w.limit {
		return fmt.Errorf("artifact %s: the build's artifacts exceed their limit of %d MiB (artifacts_max_mib)", p, w.limit>>20)
	}
	if _, err := w.cur.WriteAt(data, w.size); err != nil {
		_ = w.cur.Truncate(w.size)
		return fmt.Errorf("writing the artifact %s: %w", w.path(), osErr(err))
	}
	if final {
		if err := w.syncFile(w.cur); err != nil {
			w.syncErr = fmt.Errorf("syncing the artifact %s: %w", w.path(), osErr(err))
			return w.syncErr
		}
	}
	w.total += int64(len(data))
	w.sum.Write(data)
	w.size += int64(len(data))
	if !final {
		return nil
	}
	f := w.cur
	w.cur = nil
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing the artifact %s: %w", w.path(), osErr(err))
	}
	w.done = append(w.done, Artifact{Path: p, Size: w.size, Mode: uint32(w.mode.Perm()), SHA256: hex.EncodeToString(w.sum.Sum(nil))})
	return nil
}

// path is where the file being written is stored.
func (w *ArtifactWriter) path() string {
	return filepath.Join(w.dir, filepath.FromSlash(w.name))
}

// osErr is the operating system's error inside a file operation's error,
// without the operation and path it repeats (the caller names them).
func osErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// open starts the file at p.
func (w *ArtifactWriter) open(p string, mode fs.FileMode, offset int64) error {
	if err := CheckArtifactPath(p); err != nil {
		return err
	}
	if w.seen[p] {
		return fmt.Errorf("artifact %s: sent twice", p)
	}
	if offset != 0 {
		return fmt.Errorf("artifact %s: first chunk at offset %d", p, offset)
	}
	name := filepath.FromSlash(p)
	if d := filepath.Dir(name); !w.dirs[d] {
		if err := w.root.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("writing the artifact %s: %w", filepath.Join(w.dir, name), err)
		}
		for ; !w.dirs[d]; d = filepath.Dir(d) {
			w.dirs[d] = true
		}
	}
	// The master keeps a private copy: its own permissions are 0600
	// whatever the agent's (recorded in Mode).
	f, err := w.root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("writing the artifact %s: %w", filepath.Join(w.dir, name), osErr(err))
	}
	w.seen[p] = true
	w.cur, w.name, w.mode, w.size, w.sum = f, p, mode, 0, sha256.New()
	return nil
}

// Close ends the transfer: a file still incomplete is removed, the
// directories are synced, and the complete files are returned in the
// order they came. It fails when a file was incomplete or a sync failed
// (then or during a Chunk).
func (w *ArtifactWriter) Close() ([]Artifact, error) {
	var errs []error
	if w.syncErr != nil {
		errs = append(errs, w.syncErr)
	}
	if w.cur != nil {
		w.cur.Close()
		_ = w.root.Remove(filepath.FromSlash(w.name))
		errs = append(errs, fmt.Errorf("artifact %s: incomplete (%d bytes came)", w.name, w.size))
		w.cur = nil
	}
	for d := range w.dirs {
		if err := syncDir(filepath.Join(w.dir, d)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := syncDir(filepath.Dir(w.dir)); err != nil {
		errs = append(errs, err)
	}
	w.root.Close()
	return w.done, errors.Join(errs...)
}

// syncDir makes a directory's entries durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
