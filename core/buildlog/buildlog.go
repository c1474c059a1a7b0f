// Package buildlog writes a build's log to its file and lets any number of
// readers follow it live from any byte offset.
package buildlog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// Log is the log of a running build.
//
// A write is all or nothing: when the file system refuses part of it (the
// disk is full), what it took is cut off again, so the log never ends in
// the middle of a write and the same bytes can be written again later
// (the master's session retries them, see docs/sessions.md).
type Log struct {
	f    *os.File
	path string

	mu      sync.Mutex
	size    int64
	closed  bool
	lost    error         // the first note (Printf) that could not be written
	syncErr error         // a failed sync: every later one fails too
	changed chan struct{} // closed and replaced on every change
}

// Create creates (truncating) the log file at path.
func Create(path string) (*Log, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create log: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create log: %w", err)
	}
	return &Log{f: f, path: path, changed: make(chan struct{})}, nil
}

// Reopen opens the log file at path of a build that was running when the
// master stopped, cut back to size (the last durable checkpoint: what
// follows is sent again), to append to it.
func Reopen(path string, size int64) (*Log, error) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("reopen log: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("reopen log: %w", err)
	}
	if _, err := f.Seek(size, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("reopen log: %w", err)
	}
	return &Log{f: f, path: path, size: size, changed: make(chan struct{})}, nil
}

// Path is the log file's path.
func (l *Log) Path() string { return l.path }

// Sync makes what was written durable and returns its size. Once a sync
// failed, every later one reports that error.
func (l *Log) Sync() (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.syncErr != nil {
		return l.size, l.syncErr
	}
	if err := l.f.Sync(); err != nil {
		// The kernel may have dropped what it could not write: a later
		// sync succeeding would not make it durable.
		l.syncErr = fmt.Errorf("syncing the log %s: %w", l.path, osErr(err))
		return l.size, l.syncErr
	}
	return l.size, nil
}

// Write appends p to the log and wakes followers. It writes all of p or
// nothing: on an error (the file system is full, say: "writing the log
// PATH: no space left on device") the log keeps its size and p may be
// written again.
func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, fmt.Errorf("writing the log %s: %w", l.path, os.ErrClosed)
	}
	if err := l.write(p); err != nil {
		return 0, err
	}
	l.notify()
	return len(p), nil
}

// write writes p at the end of the log, or nothing; l.mu is held.
func (l *Log) write(p []byte) error {
	n, err := l.f.WriteAt(p, l.size)
	if err == nil {
		l.size += int64(n)
		return nil
	}
	// Cut the part the file system took (WriteAt does not say how much):
	// the next write (the same bytes again, or others) starts where the
	// log ends. Writing at the log's size keeps that true even if the cut
	// fails.
	_ = l.f.Truncate(l.size)
	return fmt.Errorf("writing the log %s: %w", l.path, osErr(err))
}

// Printf appends a note of the master's own ("conveyor: ...") to the log.
// A note that cannot be written is not retried: Close reports the first
// one, so a build whose log lacks a line does not pass as complete.
func (l *Log) Printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	if err := l.write(fmt.Appendf(nil, format, args...)); err != nil {
		if l.lost == nil {
			l.lost = err
		}
		return
	}
	l.notify()
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

func (l *Log) notify() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// Size is the number of bytes written so far.
func (l *Log) Size() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size
}

// Close flushes the log to disk and ends it; followers read to the end
// and return. It reports a note that could not be written (Printf) or a
// failed sync or close: the log on disk is not complete.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	err := l.lost
	if err == nil {
		err = l.syncErr
	}
	if serr := l.f.Sync(); serr != nil && err == nil {
		err = fmt.Errorf("syncing the log %s: %w", l.path, osErr(serr))
	}
	if cerr := l.f.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("closing the log %s: %w", l.path, osErr(cerr))
	}
	l.notify()
	return err
}

// state returns the current size, whether the log ended, and a channel
// closed at the next change.
func (l *Log) state() (int64, bool, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size, l.closed, l.changed
}

// Follow copies the log at path to w from offset. With live == nil the log
// is complete and Follow returns at its end; otherwise it waits for more
// until live is closed and fully copied, or ctx ends. flush, when not nil,
// is called after each copied batch (an HTTP flusher).
func Follow(ctx context.Context, path string, live *Log, offset int64, w io.Writer, flush func()) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && live == nil {
			return nil // a build that never started has no log
		}
		return fmt.Errorf("follow log: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return fmt.Errorf("follow log: %w", err)
	}
	buf := make([]byte, 64<<10)
	pos := offset
	for {
		var size int64
		var done bool
		var changed <-chan struct{}
		if live != nil {
			size, done, changed = live.state()
		}
		for live == nil || pos < size {
			b := buf
			if live != nil && size-pos < int64(len(b)) {
				b = buf[:size-pos] // not a write in progress that may be cut
			}
			n, err := f.Read(b)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return werr
				}
				pos += int64(n)
			}
			if err == io.EOF || n == 0 {
				break
			}
			if err != nil {
				return fmt.Errorf("follow log: %w", err)
			}
		}
		if flush != nil {
			flush()
		}
		if live == nil || (done && pos >= size) {
			return nil
		}
		if pos < size {
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
