//go:build linux

// End-to-end tests of the conveyor command. TestMain builds conveyor, the
// example launcher plugin and the SDK's commander test plugin (next to
// conveyor, where the host looks for plugins) and the pong test agent into
// one temporary directory; the tests run those binaries as real processes.
//
// The test process makes itself a child subreaper, so that a plugin whose
// server dies is reparented to the test process instead of init. The tests
// can then reap such a plugin themselves and tell a dead, reaped process
// from a zombie, without depending on how init behaves in the environment.

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/version"
)

// Deadlines, generous for a busy two-core machine.
const (
	cmdTimeout    = 60 * time.Second // one validate/plugins/version run
	startTimeout  = 30 * time.Second // server start, up to a healthy /healthz
	exitTimeout   = 30 * time.Second // server exit after SIGTERM
	goneTimeout   = 20 * time.Second // a plugin process ending after its server
	actionTimeout = 30 * time.Second // plugin restart
	pollInterval  = 20 * time.Millisecond
)

// pluginVersion is the version compiled into the example launcher plugin.
const pluginVersion = "0.1.0"

var (
	binDir      string // the built binaries, symlinks resolved
	conveyorBin string
	pluginBin   string
	pongBin     string
	emptyPath   string // an empty directory, the only entry of PATH for conveyor
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	if err := setSubreaper(); err != nil {
		fmt.Fprintf(os.Stderr, "cannot make the test process a child subreaper: %v\n", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "conveyor-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// The host reports the plugin path with symlinks resolved.
	if binDir, err = filepath.EvalSymlinks(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	conveyorBin = filepath.Join(binDir, "conveyor")
	pluginBin = filepath.Join(binDir, "conveyor-launcher-local")
	pongBin = filepath.Join(binDir, "pongagent")
	emptyPath = filepath.Join(binDir, "empty-path")
	if err := os.Mkdir(emptyPath, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, b := range [][]string{
		{"-o", conveyorBin, "."},
		{"-o", pluginBin, "../../../sdk/examples/local-launcher"},
		{"-o", pongBin, "../../../sdk/launchertest/testdata/pongagent"},
		{"-o", filepath.Join(binDir, "conveyor-launcher-commander"), "../../../sdk/launcher/testdata/commander"},
	} {
		cmd := exec.Command("go", append([]string{"build"}, b...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
			return 1
		}
	}

	code := m.Run()

	// Safety net: nothing started from binDir may outlive the tests.
	if left := leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: processes left behind: %s\n", strings.Join(left, "; "))
		killLeftovers()
		code = 1
	}
	return code
}

// setSubreaper makes orphaned descendants of the test process its children.
func setSubreaper() error {
	const prSetChildSubreaper = 36
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		return errno
	}
	return nil
}

// conveyorEnv is the environment of conveyor processes: PATH holds only an
// empty directory, so the plugin can only be found next to the executable.
func conveyorEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		// The developer's own API token must not change the tests.
		if !strings.HasPrefix(kv, "PATH=") && !strings.HasPrefix(kv, "CONVEYOR_TOKEN") {
			env = append(env, kv)
		}
	}
	return append(env, "PATH="+emptyPath)
}

// ---------------------------------------------------------------------------
// Running conveyor commands.

type result struct {
	code           int
	stdout, stderr string
}

// runConveyor runs conveyor with args in dir and returns its exit code and
// output; it fails the test when conveyor does not exit by itself.
func runConveyor(t *testing.T, dir string, args ...string) result {
	t.Helper()
	return runConveyorEnv(t, dir, nil, args...)
}

// runConveyorEnv is runConveyor with extra environment variables.
func runConveyorEnv(t *testing.T, dir string, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, conveyorBin, args...)
	cmd.Dir = dir
	cmd.Env = append(conveyorEnv(), env...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		t.Fatalf("conveyor %s: %v (context: %v)\nstdout:\n%s\nstderr:\n%s",
			strings.Join(args, " "), err, ctx.Err(), r.stdout, r.stderr)
	}
	return r
}

// render writes testdata/name into dir under its base name, with this run's
// paths in place of the @PLACEHOLDERS@, and returns the base name. Rendering
// replaces within lines only, so line:column positions are the fixture's.
func render(t *testing.T, dir, name string) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	out := strings.NewReplacer(
		"@PONGAGENT@", hclEscape(pongBin),
		"@DATA_DIR@", hclEscape(filepath.Join(dir, "data")),
		"@PLUGIN_DIR@", hclEscape(filepath.Join(dir, "plugins")),
	).Replace(string(src))
	if p := regexp.MustCompile(`@[A-Z_]+@`).FindString(out); p != "" {
		t.Fatalf("testdata/%s: unknown placeholder %s", name, p)
	}
	base := filepath.Base(name)
	if err := os.WriteFile(filepath.Join(dir, base), []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	return base
}

// hclEscape escapes s for use inside an HCL quoted string.
func hclEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "${", "$${", "%{", "%%{").Replace(s)
}

// ---------------------------------------------------------------------------
// Processes.

// procStat returns the state and parent of pid from /proc/PID/stat; the
// error wraps fs.ErrNotExist when there is no such process.
func procStat(pid int) (state byte, ppid int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: malformed %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: malformed %q", pid, b)
	}
	ppid, err = strconv.Atoi(f[1])
	return f[0][0], ppid, err
}

// exitInfo says how a process ended.
type exitInfo struct {
	// orphaned: it outlived its parent, so the test process reaped it.
	orphaned bool
	// status is its wait status when orphaned.
	status syscall.WaitStatus
}

func (e exitInfo) String() string {
	switch {
	case !e.orphaned:
		return "reaped by its parent"
	case e.status.Signaled():
		return fmt.Sprintf("orphaned, then killed by signal %d (%v)", int(e.status.Signal()), e.status.Signal())
	default:
		return fmt.Sprintf("orphaned, then exited with status %d", e.status.ExitStatus())
	}
}

// checkEnded reports whether pid has ended and been reaped. A process the
// test process inherited as subreaper is reaped here when it has ended.
func checkEnded(pid int) (exitInfo, error) {
	var ws syscall.WaitStatus
	if wpid, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); err == nil && wpid == pid {
		return exitInfo{orphaned: true, status: ws}, nil
	}
	// Not our child (ECHILD), or our child but still running (wpid 0).
	state, ppid, err := procStat(pid)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return exitInfo{}, nil
	case err != nil:
		return exitInfo{}, err
	case state == 'Z':
		return exitInfo{}, fmt.Errorf("pid %d is a zombie not yet reaped by its parent %d", pid, ppid)
	default:
		return exitInfo{}, fmt.Errorf("pid %d is still alive (state %c, parent %d)", pid, state, ppid)
	}
}

// waitEnded waits until pid has ended and been reaped.
func waitEnded(t *testing.T, pid int, timeout time.Duration) exitInfo {
	t.Helper()
	var info exitInfo
	eventually(t, timeout, fmt.Sprintf("plugin pid %d to end", pid), func() (err error) {
		info, err = checkEnded(pid)
		return err
	})
	return info
}

// eventually polls cond until it returns nil, and fails the test with the
// last error when that does not happen within timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s; last: %v", timeout, what, err)
		}
		<-tick.C
	}
}

// leftovers describes the live processes running a binary from binDir, and
// the live children of the test process (orphans it inherited). Neither may
// exist between tests; dead orphans are reaped on the way.
func leftovers() []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		state, ppid, err := procStat(pid)
		if err != nil {
			continue // gone meanwhile
		}
		if state == 'Z' && ppid == os.Getpid() {
			// A dead descendant handed to the subreaper: killed with its
			// process group, it only awaits reaping.
			var ws syscall.WaitStatus
			_, _ = syscall.Wait4(pid, &ws, 0, nil)
			continue
		}
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if ppid == os.Getpid() || strings.HasPrefix(exe, binDir+string(filepath.Separator)) {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			out = append(out, fmt.Sprintf("pid %d %s(state %c, parent %d, exe %q)",
				pid, strings.TrimSpace(string(comm)), state, ppid, exe))
		}
	}
	return out
}

// killLeftovers kills the processes running a binary from binDir and reaps
// the test process's children, one pid at a time.
func killLeftovers() {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); strings.HasPrefix(exe, binDir+string(filepath.Separator)) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if _, ppid, err := procStat(pid); err == nil && ppid == os.Getpid() {
			var ws syscall.WaitStatus
			_, _ = syscall.Wait4(pid, &ws, 0, nil)
		}
	}
}

// checkNoLeftovers fails the test when it left processes behind; register
// it first so that it runs after every other cleanup.
func checkNoLeftovers(t *testing.T) {
	t.Cleanup(func() {
		if left := leftovers(); len(left) > 0 {
			t.Errorf("processes left behind: %s", strings.Join(left, "; "))
			killLeftovers()
		}
	})
}

// ---------------------------------------------------------------------------
// A running server.

// logBuf collects a process's output and lets readers wait for more.
type logBuf struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed, and replaced, by every write
}

func newLogBuf() *logBuf { return &logBuf{changed: make(chan struct{})} }

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	close(l.changed)
	l.changed = make(chan struct{})
	return len(p), nil
}

// snapshot returns the output so far and a channel closed by the next write.
func (l *logBuf) snapshot() (string, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String(), l.changed
}

func (l *logBuf) String() string {
	s, _ := l.snapshot()
	return s
}

type serverProc struct {
	cmd  *exec.Cmd
	log  *logBuf
	url  string // http://127.0.0.1:PORT
	http *http.Client
	// tokenFile is the API token the server generated, in the data_dir
	// the configurations of testdata set (@DATA_DIR@, under dir).
	tokenFile string

	done    chan struct{} // closed when the process has exited and been reaped
	waitErr error         // cmd.Wait's result, set before done closes

	mu      sync.Mutex
	plugins map[int]bool // plugin pids seen -> known to have ended
}

// startedRE matches the server's start log line, capturing its API URL.
var startedRE = regexp.MustCompile(`conveyor server started: .*\bhttp=(http://127\.0\.0\.1:[0-9]+)\b`)

// startServer starts `conveyor server -config cfg` in dir and waits until
// it has logged its address and /healthz answers 200 {"status":"ok"}. A
// cleanup kills it if still running and checks its plugins end.
func startServer(t *testing.T, dir, cfg string) *serverProc {
	t.Helper()
	s := &serverProc{
		tokenFile: filepath.Join(dir, "data", "api-token"),
		log:       newLogBuf(),
		done:      make(chan struct{}),
		plugins:   map[int]bool{},
		http: &http.Client{
			Timeout:   5 * time.Second,
			Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		},
	}
	s.cmd = exec.Command(conveyorBin, "server", "-config", cfg)
	s.cmd.Dir = dir
	s.cmd.Env = conveyorEnv()
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	s.cmd.WaitDelay = 5 * time.Second
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() { s.cleanup(t) })

	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	for s.url == "" {
		text, changed := s.log.snapshot()
		if m := startedRE.FindStringSubmatch(text); m != nil {
			s.url = m[1]
			break
		}
		select {
		case <-changed:
		case <-s.done:
			t.Fatalf("server exited before logging its start: %v\n%s", s.waitErr, s.log)
		case <-deadline.C:
			t.Fatalf("server did not log its start within %v:\n%s", startTimeout, s.log)
		}
	}
	eventually(t, startTimeout, "GET /healthz to answer 200", func() error {
		select {
		case <-s.done:
			t.Fatalf("server exited: %v\n%s", s.waitErr, s.log)
		default:
		}
		var body map[string]string
		if err := s.get("/healthz", &body); err != nil {
			return err
		}
		if body["status"] != "ok" {
			return fmt.Errorf("body %v, want status ok", body)
		}
		return nil
	})
	return s
}

// get fetches path from the API with the server's token and decodes its
// JSON body into v; anything but 200 is an error.
func (s *serverProc) get(path string, v any) error {
	req, err := http.NewRequest(http.MethodGet, s.url+path, nil)
	if err != nil {
		return err
	}
	if path != "/healthz" {
		tok, err := os.ReadFile(s.tokenFile)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		return fmt.Errorf("GET %s: Content-Type %q", path, ct)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// pluginStatus is an element of GET /v1/plugins.
type pluginStatus struct {
	Name         string   `json:"name"`
	Version      string   `json:"version"`
	Path         string   `json:"path"`
	Protocol     int      `json:"protocol"`
	Pid          int      `json:"pid"`
	Running      bool     `json:"running"`
	Restarts     int      `json:"restarts"`
	Capabilities []string `json:"capabilities"`
	LastError    string   `json:"last_error"`
}

// localPlugin returns the one plugin of /v1/plugins, which must be local.
func (s *serverProc) localPlugin() (pluginStatus, error) {
	var ps []pluginStatus
	if err := s.get("/v1/plugins", &ps); err != nil {
		return pluginStatus{}, err
	}
	if len(ps) != 1 || ps[0].Name != "local" {
		return pluginStatus{}, fmt.Errorf("/v1/plugins = %+v, want the local plugin alone", ps)
	}
	return ps[0], nil
}

// runningPlugin checks p is the local plugin, running as a child of the
// server, and records its pid for the cleanup.
func (s *serverProc) runningPlugin(t *testing.T, p pluginStatus) {
	t.Helper()
	if p.Version != pluginVersion || p.Path != pluginBin || p.Protocol != 2 || !p.Running || p.Pid <= 0 || p.LastError != "" {
		t.Fatalf("plugin = %+v, want version %s, path %s, protocol 2, running with a pid, no error",
			p, pluginVersion, pluginBin)
	}
	s.mu.Lock()
	s.plugins[p.Pid] = false
	s.mu.Unlock()
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.Pid)); err != nil || exe != pluginBin {
		t.Fatalf("pid %d runs %q (%v), want %s", p.Pid, exe, err, pluginBin)
	}
	if state, ppid, err := procStat(p.Pid); err != nil || ppid != s.cmd.Process.Pid || state == 'Z' {
		t.Fatalf("pid %d: state %c, parent %d (%v); want a live child of the server %d",
			p.Pid, state, ppid, err, s.cmd.Process.Pid)
	}
}

// waitPluginEnded waits until the plugin pid has ended and been reaped.
func (s *serverProc) waitPluginEnded(t *testing.T, pid int) exitInfo {
	t.Helper()
	defer func() { // also on failure: the cleanup need not wait again
		s.mu.Lock()
		s.plugins[pid] = true
		s.mu.Unlock()
	}()
	return waitEnded(t, pid, goneTimeout)
}

// signal sends sig to the server and waits for it to exit.
func (s *serverProc) signal(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
	select {
	case <-s.done:
		return s.waitErr
	case <-time.After(exitTimeout):
		t.Fatalf("server still running %v after %v:\n%s", exitTimeout, sig, s.log)
		return nil
	}
}

func (s *serverProc) cleanup(t *testing.T) {
	select {
	case <-s.done:
	default:
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for pid, ended := range s.plugins {
		if ended {
			continue
		}
		var err error
		deadline := time.Now().Add(goneTimeout)
		for _, err = checkEnded(pid); err != nil && time.Now().Before(deadline); _, err = checkEnded(pid) {
			time.Sleep(pollInterval)
		}
		if err != nil {
			t.Errorf("plugin outlived its server: %v", err)
		}
	}
	if t.Failed() {
		t.Logf("server log:\n%s", s.log)
	}
}

// ---------------------------------------------------------------------------
// Tests.

func TestVersionAndUsage(t *testing.T) {
	checkNoLeftovers(t)
	dir := t.TempDir()
	tests := []struct {
		args   []string
		code   int
		stdout string // exact
		stderr string // exact
	}{
		{[]string{"version"}, 0, "conveyor " + version.Version + "\n", ""},
		{[]string{"--version"}, 0, "conveyor " + version.Version + "\n", ""},
		{[]string{"help"}, 0, usage, ""},
		{nil, 2, "", usage},
		{[]string{"frobnicate"}, 2, "", "conveyor: unknown command \"frobnicate\"\n\n" + usage},
		{[]string{"validate"}, 2, "", "Usage: conveyor validate FILE\n"},
		{[]string{"validate", "-x"}, 2, "", "Usage: conveyor validate FILE\n"},
		{[]string{"server"}, 2, "", "conveyor server: -config is required\n"},
		{[]string{"plugins"}, 2, "", "conveyor plugins: -config is required\n"},
	}
	if !strings.HasPrefix(usage, "Usage: conveyor <command>") || !strings.Contains(usage, "validate FILE") {
		t.Fatalf("usage text changed shape:\n%s", usage)
	}
	for _, tt := range tests {
		t.Run(strings.Join(append([]string{"conveyor"}, tt.args...), " "), func(t *testing.T) {
			r := runConveyor(t, dir, tt.args...)
			if r.code != tt.code {
				t.Errorf("exit code %d, want %d", r.code, tt.code)
			}
			if r.stdout != tt.stdout {
				t.Errorf("stdout:\n%q\nwant:\n%q", r.stdout, tt.stdout)
			}
			if r.stderr != tt.stderr {
				t.Errorf("stderr:\n%q\nwant:\n%q", r.stderr, tt.stderr)
			}
		})
	}
}

func TestValidateGood(t *testing.T) {
	checkNoLeftovers(t)
	dir := t.TempDir()
	cfg := render(t, dir, "good.hcl")
	r := runConveyor(t, dir, "validate", cfg)
	if r.code != 0 {
		t.Fatalf("exit code %d, want 0; stderr:\n%s", r.code, r.stderr)
	}
	if want := cfg + ": configuration is valid\n"; r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
	if regexp.MustCompile(`(?m)Error|\[ERROR\]`).MatchString(r.stderr) {
		t.Errorf("stderr reports errors:\n%s", r.stderr)
	}
	// validate checks; it does not create the server's state.
	if _, err := os.Stat(filepath.Join(dir, "data")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("validate created the data_dir (stat: %v)", err)
	}
}

func TestValidateBad(t *testing.T) {
	checkNoLeftovers(t)
	tests := []struct {
		file      string
		line, col int
		summary   string
		src       string // part of the offending line, a check on the fixture
		detail    string // part of the detail
	}{
		{"server_unknown_attribute.hcl", 3, 3, "Unsupported argument",
			`colour = "blue"`, `An argument named "colour" is not expected here.`},
		{"undeclared_launcher.hcl", 11, 14, "Undeclared launcher",
			`launcher = "docker"`, `The node "n2" uses launcher "docker", but there is no launcher "docker" block. Declared launchers: "local".`},
		{"unknown_launcher.hcl", 3, 1, "Unknown launcher",
			`launcher "nosuch" {}`, fmt.Sprintf(`Launcher "nosuch": plugin binary not found: no executable conveyor-launcher-nosuch in %s, $PATH.`, binDir)},
		{"unrunnable_job.hcl", 12, 12, "Job cannot run on any node",
			`labels = ["linux", "gpu"]`, `that job "j" requires`},
		{"command_wrong_type.hcl", 6, 15, "Incorrect attribute value type",
			`command = "notalist"`, `Inappropriate value for attribute "command": list of string required`},
		{"command_not_found.hcl", 6, 15, "Invalid local configuration",
			`command = ["/nonexistent/prog"]`, `command: program "/nonexistent/prog" not found`},
		{"missing_node_block.hcl", 3, 1, "Missing required argument",
			`node "n1" {`, `The argument "command" is required, but this node has no local block to set it in.`},
	}
	diagHeader := regexp.MustCompile(`(?m)^\S+:\d+:\d+: (Error|Warning): `)
	for _, tt := range tests {
		t.Run(strings.TrimSuffix(tt.file, ".hcl"), func(t *testing.T) {
			dir := t.TempDir()
			cfg := render(t, dir, filepath.Join("bad", tt.file))
			src, err := os.ReadFile(filepath.Join(dir, cfg))
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(string(src), "\n")
			if tt.line > len(lines) || !strings.Contains(strings.Join(strings.Fields(lines[tt.line-1]), " "), tt.src) {
				t.Fatalf("fixture: line %d is not the line with %q", tt.line, tt.src)
			}
			srcLine := lines[tt.line-1]

			r := runConveyor(t, dir, "validate", cfg)
			if r.code != 1 {
				t.Errorf("exit code %d, want 1", r.code)
			}
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing", r.stdout)
			}
			header := fmt.Sprintf("%s:%d:%d: Error: %s", cfg, tt.line, tt.col, tt.summary)
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(header) + `$`).MatchString(r.stderr) {
				t.Errorf("stderr lacks the line %q", header)
			}
			if n := len(diagHeader.FindAllString(r.stderr, -1)); n != 1 {
				t.Errorf("stderr has %d diagnostics, want 1", n)
			}
			snippet := fmt.Sprintf(`(?m)^\s*%d: %s$`, tt.line, regexp.QuoteMeta(srcLine))
			if !regexp.MustCompile(snippet).MatchString(r.stderr) {
				t.Errorf("stderr does not quote line %d, %q", tt.line, srcLine)
			}
			if !strings.Contains(r.stderr, tt.detail) {
				t.Errorf("stderr lacks the detail %q", tt.detail)
			}
			if t.Failed() {
				t.Logf("stderr:\n%s", r.stderr)
			}
		})
	}
}

func TestPlugins(t *testing.T) {
	checkNoLeftovers(t)
	dir := t.TempDir()
	cfg := render(t, dir, "good.hcl")

	check := func(t *testing.T, r result) {
		t.Helper()
		if r.code != 0 {
			t.Fatalf("exit code %d, want 0; stderr:\n%s", r.code, r.stderr)
		}
		rows := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		if len(rows) != 2 {
			t.Fatalf("stdout has %d lines, want a header and one plugin:\n%s", len(rows), r.stdout)
		}
		if got, want := strings.Fields(rows[0]), []string{"NAME", "VERSION", "PROTOCOL", "CAPABILITIES", "PATH"}; !slices.Equal(got, want) {
			t.Errorf("header %q, want %q", got, want)
		}
		// The path comes last and may in principle hold spaces.
		if !strings.HasSuffix(rows[1], " "+pluginBin) {
			t.Errorf("row %q does not end with the plugin path %s", rows[1], pluginBin)
		}
		if got, want := strings.Fields(strings.TrimSuffix(rows[1], pluginBin)), []string{"local", pluginVersion, "2", "-"}; !slices.Equal(got, want) {
			t.Errorf("row %q: fields %q, want %q then the path", rows[1], got, want)
		}
	}

	t.Run("next to executable", func(t *testing.T) {
		check(t, runConveyor(t, dir, "plugins", "-config", cfg))
	})
	// The host resolves its own symlinks to find the plugin next to the
	// real binary.
	t.Run("through a symlink", func(t *testing.T) {
		link := filepath.Join(t.TempDir(), "conveyor")
		if err := os.Symlink(conveyorBin, link); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, link, "plugins", "-config", cfg)
		cmd.Dir, cmd.Env = dir, conveyorEnv()
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%v\nstderr:\n%s", err, stderr.String())
		}
		check(t, result{stdout: stdout.String(), stderr: stderr.String()})
	})
}

// TestServer starts the server and stops it: with SIGTERM it exits 0 having
// stopped (and reaped) its plugin; with SIGKILL the plugin must still end.
func TestServer(t *testing.T) {
	checkNoLeftovers(t)

	t.Run("SIGTERM", func(t *testing.T) {
		dir := t.TempDir()
		s := startServer(t, dir, render(t, dir, "good.hcl"))
		if st, err := os.Stat(filepath.Join(dir, "data")); err != nil || !st.IsDir() {
			t.Errorf("data_dir not created: %v", err)
		}
		p, err := s.localPlugin()
		if err != nil {
			t.Fatal(err)
		}
		s.runningPlugin(t, p)
		if p.Restarts != 0 {
			t.Errorf("restarts = %d, want 0", p.Restarts)
		}

		start := time.Now()
		if err := s.signal(t, syscall.SIGTERM); err != nil {
			t.Fatalf("server exit after SIGTERM: %v, want status 0\n%s", err, s.log)
		}
		t.Logf("server exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
		info := s.waitPluginEnded(t, p.Pid)
		if info.orphaned {
			t.Errorf("plugin pid %d outlived the server: %v", p.Pid, info)
		}
		log := s.log.String()
		for _, want := range []string{"shutting down", fmt.Sprintf("plugin stopped: pid=%d", p.Pid)} {
			if !strings.Contains(log, want) {
				t.Errorf("server log lacks %q", want)
			}
		}
	})

	t.Run("SIGKILL", func(t *testing.T) {
		dir := t.TempDir()
		s := startServer(t, dir, render(t, dir, "good.hcl"))
		p, err := s.localPlugin()
		if err != nil {
			t.Fatal(err)
		}
		s.runningPlugin(t, p)

		err = s.signal(t, syscall.SIGKILL)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("server exit: %v, want killed by SIGKILL", err)
		}
		start := time.Now()
		info := s.waitPluginEnded(t, p.Pid)
		t.Logf("plugin pid %d ended %v after the server died: %v", p.Pid, time.Since(start).Round(time.Millisecond), info)
	})
}

// TestServerRestartsCrashedPlugin kills the plugin behind the server's back:
// the server reaps it and starts a new one.
func TestServerRestartsCrashedPlugin(t *testing.T) {
	checkNoLeftovers(t)
	dir := t.TempDir()
	s := startServer(t, dir, render(t, dir, "good.hcl"))
	old, err := s.localPlugin()
	if err != nil {
		t.Fatal(err)
	}
	s.runningPlugin(t, old)

	start := time.Now()
	if err := syscall.Kill(old.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var cur pluginStatus
	eventually(t, actionTimeout, "the plugin to be restarted", func() (err error) {
		if cur, err = s.localPlugin(); err != nil {
			return err
		}
		if cur.Restarts != 1 || !cur.Running || cur.Pid == old.Pid {
			return fmt.Errorf("plugin %+v", cur)
		}
		return nil
	})
	t.Logf("plugin restarted %v after SIGKILL: pid %d -> %d", time.Since(start).Round(time.Millisecond), old.Pid, cur.Pid)
	s.runningPlugin(t, cur)
	// The server, still alive, reaps the old process.
	if info := s.waitPluginEnded(t, old.Pid); info.orphaned {
		t.Errorf("old plugin pid %d was not reaped by the server: %v", old.Pid, info)
	}
	if want := fmt.Sprintf("plugin restarted: pid=%d", cur.Pid); !strings.Contains(s.log.String(), want) {
		t.Errorf("server log lacks %q", want)
	}

	// The new plugin is stopped with the server like the first one.
	if again, err := s.localPlugin(); err != nil || again.Pid != cur.Pid || again.Restarts != 1 {
		t.Errorf("plugin changed again: %+v (%v)", again, err)
	}
	if err := s.signal(t, syscall.SIGTERM); err != nil {
		t.Fatalf("server exit after SIGTERM: %v, want status 0", err)
	}
	if info := s.waitPluginEnded(t, cur.Pid); info.orphaned {
		t.Errorf("restarted plugin pid %d outlived the server: %v", cur.Pid, info)
	}
}

// TestNodeDelete: a configured node cannot be deleted; once its block is
// gone the server still knows it and forgets it on request, and -purge asks
// its launcher (here one without the purge capability) to delete its data.
func TestNodeDelete(t *testing.T) {
	checkNoLeftovers(t)
	dir := t.TempDir()
	cfg := render(t, dir, "good.hcl")
	s := startServer(t, dir, cfg)
	r := runConveyor(t, dir, "node", "delete", "n1", "-address", s.url, "-token-file", s.tokenFile, "--purge")
	if r.code != 1 || !strings.Contains(r.stderr, `node "n1" is in the configuration: remove its block`) {
		t.Fatalf("deleting a configured node: exit %d, stderr %q", r.code, r.stderr)
	}
	if err := s.signal(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	// The same server without n1's block (n2 takes its place).
	src, err := os.ReadFile(filepath.Join(dir, cfg))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, cfg), []byte(strings.Replace(string(src), `node "n1"`, `node "n2"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	s = startServer(t, dir, cfg)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"node", "delete", "nope"}, 1, "no such node: nope"},
		{[]string{"node", "delete", "n1", "-purge"}, 0, `n1: node forgotten; launcher "local" keeps nothing to purge`},
		{[]string{"node", "delete", "n1"}, 1, "no such node: n1"},
		{[]string{"node", "remove", "n1"}, 2, "conveyor node delete [-purge] NAME"},
		{[]string{"node", "delete"}, 2, "conveyor node delete [-purge] NAME"},
		// The node controls.
		{[]string{"node", "drain", "-reason", "disk swap", "n2"}, 0, "drained by bootstrap"},
		{[]string{"node", "show", "n2"}, 0, "  drain  bootstrap  disk swap"},
		{[]string{"node", "show", "n2"}, 0, "disk swap"},
		{[]string{"nodes"}, 0, ",drained "},
		{[]string{"node", "launch", "n2"}, 1, "the node is drained"},
		{[]string{"node", "online", "n2"}, 0, "n2: "},
		{[]string{"node", "online", "n2"}, 1, "the node is not drained"},
		{[]string{"node", "approve-key", "n2", "MD5:00"}, 1, `a host key fingerprint is "SHA256:"`},
		{[]string{"node", "approve-key", "n2"}, 2, "conveyor node approve-key NAME FINGERPRINT"},
		{[]string{"node", "drain", "nope"}, 1, "no such node: nope"},
	} {
		r := runConveyor(t, dir, append(tc.args, "-address", s.url, "-token-file", s.tokenFile)...)
		if r.code != tc.code || !strings.Contains(r.stdout+r.stderr, tc.want) {
			t.Errorf("conveyor %s: exit %d, output %q; want exit %d and %q", strings.Join(tc.args, " "), r.code, r.stdout+r.stderr, tc.code, tc.want)
		}
	}
}

// TestAPIToken: the CLI takes the token from -token, -token-file,
// CONVEYOR_TOKEN or CONVEYOR_TOKEN_FILE, and explains a refusal; the
// server logs where its token is, never the token.
func TestAPIToken(t *testing.T) {
	checkNoLeftovers(t)
	dir := t.TempDir()
	s := startServer(t, dir, render(t, dir, "good.hcl"))
	b, err := os.ReadFile(s.tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(b))
	if st, err := os.Stat(s.tokenFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, %v; want mode 0600", st, err)
	}
	const hint = "set CONVEYOR_TOKEN or -token-file DATA_DIR/api-token"
	tests := []struct {
		name string
		env  []string
		args []string
		code int
		want string
	}{
		{"no token", nil, []string{"nodes"}, 1, hint},
		{"wrong token", nil, []string{"nodes", "-token", "not-the-token-at-all"}, 1, hint},
		{"wrong token env", []string{"CONVEYOR_TOKEN=not-the-token-at-all"}, []string{"build", "hello"}, 1, hint},
		{"-token", nil, []string{"nodes", "-token", token}, 0, "n1"},
		{"-token-file", nil, []string{"nodes", "-token-file", s.tokenFile}, 0, "n1"},
		{"CONVEYOR_TOKEN", []string{"CONVEYOR_TOKEN=" + token}, []string{"nodes"}, 0, "n1"},
		{"CONVEYOR_TOKEN_FILE", []string{"CONVEYOR_TOKEN_FILE=" + s.tokenFile}, []string{"nodes"}, 0, "n1"},
		{"flag over env", []string{"CONVEYOR_TOKEN=not-the-token-at-all"}, []string{"nodes", "-token-file", s.tokenFile}, 0, "n1"},
		{"secret needs the token", nil, []string{"secret", "n1"}, 1, hint},
		{"secret with the token", nil, []string{"secret", "n1", "-token-file", s.tokenFile}, 1, "has no secret manager"},
		{"delete needs the token", nil, []string{"node", "delete", "n1"}, 1, hint},
		{"both flags", nil, []string{"nodes", "-token", token, "-token-file", s.tokenFile}, 2, "exclusive"},
		{"missing file", nil, []string{"nodes", "-token-file", filepath.Join(dir, "nope")}, 2, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runConveyorEnv(t, dir, tt.env, append(tt.args, "-address", s.url)...)
			if r.code != tt.code || !strings.Contains(r.stdout+r.stderr, tt.want) {
				t.Errorf("conveyor %s: exit %d, output %q; want exit %d and %q", strings.Join(tt.args, " "), r.code, r.stdout+r.stderr, tt.code, tt.want)
			}
		})
	}
	if log := s.log.String(); strings.Contains(log, token) || !strings.Contains(log, s.tokenFile) {
		t.Errorf("the server log must name %s and never hold the token:\n%s", s.tokenFile, log)
	}
}
