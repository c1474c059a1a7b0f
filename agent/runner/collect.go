package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"
)

// FileChunkSize bounds the data of one file chunk Collect sends.
const FileChunkSize = 256 << 10

// SendChunk sends one chunk of a file: data at offset of the file at
// path (slash-separated, relative to the workspace), whose permission bits
// are mode; final marks the file's last chunk. An error stops the
// collection.
type SendChunk func(path string, mode fs.FileMode, offset int64, data []byte, final bool) error

// Collected is what a collection found and sent.
type Collected struct {
	// Files and Bytes count the files sent and their bytes.
	Files int
	Bytes int64
	// Missing are the patterns no file matched.
	Missing []string
	// Refused says, one line each, why a matching file or a pattern was
	// not sent: it leads outside the workspace, is not a regular file or
	// cannot be read.
	Refused []string
}

// Collect sends, in path order and each once, the regular files of the
// workspace workdir under root (see Workspace) that match patterns:
// slash-separated globs relative to the workspace, each segment as in
// path.Match, and a segment "**" matching any number of directories.
// Files are read through an os.Root of the workspace: a path that leaves
// it, by ".." or through a symbolic link, is refused, never read.
// Symbolic links to files inside the workspace are sent with their
// target's content; directories reached through a symbolic link are not
// searched. It returns early with the error of send or of ctx.
func Collect(ctx context.Context, root, workdir string, patterns []string, send SendChunk) (*Collected, error) {
	ws, err := Workspace(root, workdir)
	if err != nil {
		return nil, err
	}
	r, err := os.OpenRoot(ws)
	if err != nil {
		return nil, fmt.Errorf("open workspace: %w", err)
	}
	defer r.Close()
	res := &Collected{}
	var files []string
	for _, p := range patterns {
		found, refused, err := match(ctx, r.FS(), p)
		if err != nil {
			return res, err
		}
		res.Refused = append(res.Refused, refused...)
		if len(found) == 0 && len(refused) == 0 {
			res.Missing = append(res.Missing, p)
		}
		files = append(files, found...)
	}
	slices.Sort(files)
	for _, name := range slices.Compact(files) {
		if err := context.Cause(ctx); ctx.Err() != nil {
			return res, err
		}
		n, sent, err := sendFile(r, name, send)
		var ref *refusal
		switch {
		case errors.As(err, &ref):
			res.Refused = append(res.Refused, ref.line)
		case err != nil:
			return res, err
		case sent:
			res.Files++
			res.Bytes += n
		}
	}
	return res, nil
}

// sendFile sends one file and returns its size. It reports a file it
// does not send as a *refusal, except a directory (reached through a
// symbolic link), which it skips. Other errors are send's.
func sendFile(r *os.Root, name string, send SendChunk) (int64, bool, error) {
	// Stat first: opening a FIFO would block.
	fi, err := r.Stat(name)
	if err != nil {
		return 0, false, refuse(name, err)
	}
	switch {
	case fi.IsDir():
		return 0, false, nil
	case !fi.Mode().IsRegular():
		return 0, false, refuse(name, fmt.Errorf("%w (%s)", errNotRegular, fi.Mode().Type()))
	}
	f, err := r.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return 0, false, refuse(name, err)
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil || !fi.Mode().IsRegular() { // replaced meanwhile
		return 0, false, refuse(name, fmt.Errorf("%w (changed while read)", errNotRegular))
	}
	mode := fi.Mode().Perm()
	// Each chunk goes once the next read tells whether it is the last.
	cur, err := readChunk(f)
	if err != nil {
		return 0, false, refuse(name, err)
	}
	var off int64
	for {
		next, err := readChunk(f)
		if err != nil {
			return off, false, refuse(name, err)
		}
		final := len(next) == 0
		if err := send(name, mode, off, cur, final); err != nil {
			return off, false, err
		}
		off += int64(len(cur))
		if final {
			return off, true, nil
		}
		cur = next
	}
}

var errNotRegular = errors.New("not a regular file")

// refusal is a file that was not sent, and why; Collect records it and
// goes on.
type refusal struct{ line string }

func (r *refusal) Error() string { return r.line }

func refuse(name string, err error) error {
	msg := err.Error()
	var pe *fs.PathError
	if errors.As(err, &pe) {
		msg = pe.Err.Error()
	}
	if strings.Contains(msg, "escapes") {
		msg = "it leads outside the workspace (symbolic link)"
	}
	return &refusal{line: fmt.Sprintf("%s: not sent: %s", name, msg)}
}

// readChunk reads up to FileChunkSize bytes; empty at the end.
func readChunk(f io.Reader) ([]byte, error) {
	buf := make([]byte, FileChunkSize)
	n, err := io.ReadFull(f, buf)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = nil
	}
	return buf[:n], err
}

// match lists the files of fsys that pattern matches, and the refusals
// met on the way (a pattern that is not a relative path, a directory to
// search that leads outside the workspace).
func match(ctx context.Context, fsys fs.FS, pattern string) (found, refused []string, err error) {
	segs := strings.Split(pattern, "/")
	for _, s := range segs {
		if _, err := path.Match(s, ""); err != nil || s == "" || s == "." || s == ".." {
			return nil, []string{fmt.Sprintf("%s: not a relative slash-separated glob inside the workspace", pattern)}, nil
		}
	}
	// Search from the longest literal prefix only.
	lit := 0
	for lit < len(segs)-1 && !hasMeta(segs[lit]) {
		lit++
	}
	base := "."
	if lit > 0 {
		base = path.Join(segs[:lit]...)
	}
	if !hasMeta(segs[len(segs)-1]) && lit == len(segs)-1 {
		// A plain path: nothing to search.
		name := path.Join(segs...)
		fi, err := fs.Stat(fsys, name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, nil, nil
		case err == nil && fi.IsDir():
			return nil, []string{fmt.Sprintf("%s: not sent: a directory (%s/** sends what it holds)", name, name)}, nil
		}
		return []string{name}, nil, nil // sendFile refuses what cannot be read
	}
	err = fs.WalkDir(fsys, base, func(p string, d fs.DirEntry, err error) error {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			refused = append(refused, refuse(p, err).Error())
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		name := splitPath(p)
		if d.IsDir() {
			if p != base && !couldContain(segs, name) {
				return fs.SkipDir
			}
			return nil
		}
		if matchSegs(segs, name) {
			found = append(found, p)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return found, refused, nil
}

func splitPath(p string) []string {
	if p == "." {
		return nil
	}
	return strings.Split(p, "/")
}

// hasMeta reports whether a pattern segment holds glob syntax.
func hasMeta(seg string) bool { return strings.ContainsAny(seg, `*?[\`) }

// matchSegs reports whether the path name (its segments) matches the
// pattern's segments; "**" matches zero or more segments.
func matchSegs(pat, name []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			for i := 0; i <= len(name); i++ {
				if matchSegs(pat[1:], name[i:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		if ok, _ := path.Match(pat[0], name[0]); !ok {
			return false
		}
		pat, name = pat[1:], name[1:]
	}
	return len(name) == 0
}

// couldContain reports whether a path below the directory dir could
// match the pattern: the directory is worth searching.
func couldContain(pat, dir []string) bool {
	for len(dir) > 0 {
		if len(pat) == 0 {
			return false
		}
		if pat[0] == "**" {
			return true
		}
		if ok, _ := path.Match(pat[0], dir[0]); !ok {
			return false
		}
		pat, dir = pat[1:], dir[1:]
	}
	return len(pat) > 0
}
