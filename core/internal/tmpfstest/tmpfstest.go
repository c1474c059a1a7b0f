// Package tmpfstest mounts small tmpfs file systems for tests that need a
// really full disk (ENOSPC from the kernel, partial writes and all).
package tmpfstest

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/conveyor-ci/conveyor/sdk/testenv"
)

// Mount mounts a tmpfs of size (mount's notation: "1m") over dir, created
// if need be, and unmounts it when the test ends. Without the mount
// program the test ends through testenv (`make test` fails); where
// mounting is impossible (not root, no CAP_SYS_ADMIN in a container) the
// test is skipped, saying so: the suite runs as root in CI.
func Mount(t testing.TB, dir, size string) {
	t.Helper()
	mount := testenv.Command(t, "mount", "mount")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(mount, "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput()
	if err != nil {
		if os.Geteuid() != 0 || strings.Contains(string(out), "permission denied") || strings.Contains(string(out), "not permitted") {
			t.Skipf("cannot mount a small tmpfs to fill a disk (%v: %s): the disk-full tests need root (CI runs them as root)", err, bytes.TrimSpace(out))
		}
		t.Fatalf("mount a tmpfs over %s: %v: %s", dir, err, out)
	}
	t.Cleanup(func() {
		// Lazily: a process under test may still hold a file open there.
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
}

// Resize changes the size of the tmpfs mounted over dir: space comes back
// (or goes).
func Resize(t testing.TB, dir, size string) {
	t.Helper()
	if out, err := exec.Command(testenv.Command(t, "mount", "mount"), "-o", "remount,size="+size, dir).CombinedOutput(); err != nil {
		t.Fatalf("resize the tmpfs over %s: %v: %s", dir, err, out)
	}
}
