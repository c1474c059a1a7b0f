package main

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
)

// lineBytes is the length of a line of test data, newline included: the
// size of an Output frame's data, and of a kcat message.
const lineBytes = 32 << 10

// writeData writes size bytes of incompressible printable text in lines of
// lineBytes (the last one shorter) to path. Printable, so that kcat splits
// it into one message per line; random, so that no layer gains by
// compressing it.
func writeData(path string, size int64) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", fmt.Errorf("test data: %w", err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if err := fillData(w, size, rand.New(rand.NewChaCha8([32]byte{'c', 'o', 'n', 'v', 'e', 'y', 'o', 'r'}))); err != nil {
		f.Close()
		return "", fmt.Errorf("test data: %w", err)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return "", fmt.Errorf("test data: %w", err)
	}
	return path, f.Close()
}

const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"

// fillData writes size bytes of lines of lineBytes, each ending in a
// newline, drawn from r.
func fillData(w io.Writer, size int64, r *rand.Rand) error {
	line := make([]byte, lineBytes)
	for size > 0 {
		n := int(min(size, lineBytes))
		for i := 0; i < n-1; i += 8 {
			v := r.Uint64()
			for j := i; j < min(i+8, n-1); j++ {
				line[j] = alphabet[v&63]
				v >>= 6
			}
		}
		line[n-1] = '\n'
		if _, err := w.Write(line[:n]); err != nil {
			return err
		}
		size -= int64(n)
	}
	return nil
}

// counter counts the bytes written to it.
type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}
