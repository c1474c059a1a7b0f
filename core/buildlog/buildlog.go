// Package buildlog writes a build's log to its file and lets any number of
// readers follow it live from any byte offset.
package buildlog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// Log is the log of a running build.
type Log struct {
	f *os.File

	mu      sync.Mutex
	size    int64
	closed  bool
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
	return &Log{f: f, changed: make(chan struct{})}, nil
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
	return &Log{f: f, size: size, changed: make(chan struct{})}, nil
}

// Sync makes what was written durable and returns its size.
func (l *Log) Sync() (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return l.size, nil
	}
	return l.size, l.f.Sync()
}

// Write appends p to the log and wakes followers.
func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, os.ErrClosed
	}
	n, err := l.f.Write(p)
	l.size += int64(n)
	l.notify()
	return n, err
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
// and return.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	err := l.f.Sync()
	if cerr := l.f.Close(); err == nil {
		err = cerr
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
			n, err := f.Read(buf)
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
