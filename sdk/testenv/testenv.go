// Package testenv is what a test does when a real component it needs (an
// OpenSSH sshd, a headless chromium, kcat, openssl...) is missing from the
// machine. Under `make test`, which sets CONVEYOR_TEST_REQUIRE=1, the test
// fails and says how to install the component: a green suite must not have
// quietly tested less. Under a plain `go test`, the test is skipped with
// that same message.
//
// A skip that no installation can fix (the test needs root and runs as
// another user) is not this package's business: such a test calls t.Skip
// itself, and `make test` lists it in its skip summary.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RequireEnv is the environment variable that, set to 1, makes a missing
// component fail the test instead of skipping it. `make test` sets it.
const RequireEnv = "CONVEYOR_TEST_REQUIRE"

// Strict reports whether a missing component fails the test.
func Strict() bool { return os.Getenv(RequireEnv) == "1" }

// Missing ends the test for want of what: it fails (Strict) or skips,
// with hint saying how to get it.
func Missing(t testing.TB, what, hint string) {
	t.Helper()
	msg := fmt.Sprintf("%s is missing: %s", what, hint)
	if Strict() {
		t.Fatalf("%s (%s=1: `make test` requires it)", msg, RequireEnv)
	}
	t.Skipf("%s (skipped; `make test` would fail)", msg)
}

// Command returns the path of the program name, a command looked up on
// PATH or an absolute path that must be executable. Without it the test
// ends through Missing, naming the Debian package that provides it.
func Command(t testing.TB, name, debianPackage string) string {
	t.Helper()
	path, err := find(name)
	if err != nil {
		Missing(t, name, InstallHint(debianPackage))
	}
	return path
}

// InstallHint says how to install a Debian package the tests need.
func InstallHint(debianPackage string) string {
	return fmt.Sprintf("run `make deps` (scripts/debian-packages lists what it installs) or apt-get install %s", debianPackage)
}

func find(name string) (string, error) {
	if !filepath.IsAbs(name) {
		return exec.LookPath(name)
	}
	fi, err := os.Stat(name)
	if err != nil {
		return "", err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%s is not an executable file", name)
	}
	return name, nil
}
