// Package plugins starts, supervises and stops the launcher plugins a
// configuration declares, and decodes their configuration blocks.
package plugins

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BinaryPrefix prefixes every launcher plugin binary's name.
const BinaryPrefix = "conveyor-launcher-"

// ErrNotFound is returned by Find when no binary matches.
var ErrNotFound = errors.New("plugin binary not found")

// Find locates the binary of launcher name: in pluginDir when set, then
// next to the running executable, then on PATH. The error lists where it
// looked.
func Find(name, pluginDir string) (string, error) {
	bin := BinaryPrefix + name
	var looked []string
	var dirs []string
	if pluginDir != "" {
		dirs = append(dirs, pluginDir)
	}
	if exe, err := os.Executable(); err == nil {
		if resolved, err := filepath.EvalSymlinks(exe); err == nil {
			exe = resolved
		}
		dirs = append(dirs, filepath.Dir(exe))
	}
	for _, dir := range dirs {
		p := filepath.Join(dir, bin)
		looked = append(looked, dir)
		if isExecutable(p) {
			return p, nil
		}
	}
	if p, err := exec.LookPath(bin); err == nil {
		return filepath.Abs(p)
	}
	looked = append(looked, "$PATH")
	return "", fmt.Errorf("%w: no executable %s in %s", ErrNotFound, bin, strings.Join(looked, ", "))
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}
