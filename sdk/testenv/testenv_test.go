package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// helperEnv makes TestHelperProcess act: it is the test that the table
// below runs in a child process, to see it fail or skip.
const helperEnv = "TESTENV_HELPER_COMMAND"

func TestHelperProcess(t *testing.T) {
	name := os.Getenv(helperEnv)
	if name == "" {
		return
	}
	path := Command(t, name, "some-package")
	t.Logf("found %s", path)
}

// TestCommand: a missing program fails the test under
// CONVEYOR_TEST_REQUIRE=1 and skips it otherwise, naming the package; a
// present one (on PATH or by absolute path) lets the test run.
func TestCommand(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "not-executable")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	const missing = "conveyor-no-such-program"
	for _, tc := range []struct {
		name, command, require string
		wantExit               int
		want                   []string
	}{
		{"missing, make test", missing, "1", 1, []string{"--- FAIL", missing + " is missing", "apt-get install some-package", "make deps", RequireEnv + "=1"}},
		{"missing, go test", missing, "", 0, []string{"--- SKIP", missing + " is missing", "apt-get install some-package", "skipped"}},
		{"missing absolute path, make test", filepath.Join(dir, "nothing"), "1", 1, []string{"--- FAIL", "nothing is missing"}},
		{"not executable, make test", notExec, "1", 1, []string{"--- FAIL", "not-executable is missing"}},
		{"on PATH, make test", "sh", "1", 0, []string{"--- PASS", "found "}},
		{"absolute path, make test", sh, "1", 0, []string{"--- PASS", "found " + sh}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), helperEnv+"="+tc.command, RequireEnv+"="+tc.require)
			out, err := cmd.CombinedOutput()
			exit := 0
			if ee, ok := err.(*exec.ExitError); ok {
				exit = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if exit != tc.wantExit {
				t.Errorf("exit status %d, want %d\n%s", exit, tc.wantExit, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}
