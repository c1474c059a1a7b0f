package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// Bounds on what loading a configuration reads. A configuration is trusted
// input, but `conveyor validate` is what people run on a file they were
// sent: neither a configuration file nor file() may make it read without end,
// block, or take unbounded memory.
const (
	// MaxConfigFileBytes bounds one configuration file.
	MaxConfigFileBytes = 1 << 20
	// MaxConfigBytes bounds all configuration files loaded together.
	MaxConfigBytes = 8 << 20
	// MaxFileFuncBytes bounds the file that file() reads: a step's stdin
	// (at most MaxStdin) is what needs the most.
	MaxFileFuncBytes = MaxStdin
	// MaxFuncOutputBytes bounds what the functions of one configuration
	// (file, env, join, upper, lower) return in all, so that a template
	// repeating file("big") thousands of times cannot fill the memory.
	MaxFuncOutputBytes = 64 << 20
)

// errNotRegular is returned by readRegular for a path that is not a regular
// file (a FIFO, a device, a socket, a directory).
var errNotRegular = errors.New("not a regular file")

// readRegular reads the regular file at path, of at most limit bytes. It
// never blocks on a FIFO or a device: the file is opened non-blocking, and
// the opened descriptor (not the path, which could be swapped meanwhile) is
// checked to be a regular file before anything is read. A file growing past
// limit while being read is refused too.
func readRegular(path string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, unwrapPathError(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, unwrapPathError(err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w (%s)", errNotRegular, fileKind(st.Mode()))
	}
	if st.Size() > limit {
		return nil, tooLarge(st.Size(), limit)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, unwrapPathError(err)
	}
	if int64(len(b)) > limit {
		return nil, tooLarge(int64(len(b)), limit)
	}
	return b, nil
}

// tooLarge describes a file of size bytes over limit.
func tooLarge(size, limit int64) error {
	return fmt.Errorf("the file is larger than the limit of %s (it has %d bytes or more)", byteSize(limit), size)
}

// byteSize formats n bytes for messages: "4 MiB", "512 KiB", "100 bytes".
func byteSize(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	default:
		return fmt.Sprintf("%d bytes", n)
	}
}

// fileKind names the type of a file that is not regular.
func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a device"
	default:
		return "type " + m.Type().String()
	}
}

// unwrapPathError drops the *os.PathError wrapping, whose path the callers
// print themselves.
func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
