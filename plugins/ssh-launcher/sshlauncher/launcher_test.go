package sshlauncher

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/hostkey"
	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/sshdtest"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

func TestKeyAuthRoundTripAndTeardown(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	n := f.mustConfigure("", f.baseNode())
	c := f.launch(n)
	if d := c.(launcher.Describer).Description(); d != f.srv.User+"@"+f.srv.Addr() {
		t.Errorf("Description = %q, want user@host:port", d)
	}
	pingPong(t, c, 50)
	if f.agentsRunning() != 1 {
		t.Fatalf("want 1 remote agent, processes: %q", f.srv.Processes())
	}
	if err := f.l.Teardown(context.Background(), "n1"); err != nil {
		t.Fatal(err)
	}
	if err := recvErr(t, c); !errors.Is(err, io.EOF) {
		t.Errorf("Recv after Teardown: %v, want io.EOF", err)
	}
	eventually(t, "the remote agent to exit", func() bool { return f.agentsRunning() == 0 })
	if err := f.l.Teardown(context.Background(), "n1"); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
}

// writeEncryptedKey writes a passphrase-protected key and authorizes it.
func writeEncryptedKey(t *testing.T, f *fixture, passphrase string) string {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "enc", []byte(passphrase))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "enc_key")
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	signer, _ := ssh.NewSignerFromKey(priv)
	f.srv.AuthorizeKey(signer.PublicKey())
	return file
}

func TestEncryptedKey(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	keyFile := writeEncryptedKey(t, f, "s3cret")
	node := f.node("private_key_file", strconv.Quote(keyFile))

	_, err := f.configure("", node)
	wantConfigError(t, err, "n1", "private_key_passphrase", "encrypted")
	_, err = f.configure("", node+`private_key_passphrase = "wrong"`)
	wantConfigError(t, err, "n1", "private_key_passphrase", "decrypt")

	n := f.mustConfigure("", node+`private_key_passphrase = "s3cret"`)
	pingPong(t, f.launch(n), 1)
}

// TestPasswordAuth logs in with a password, with sshd's default
// keyboard-interactive on and off. A refused password is refused for good:
// one attempt, logged at ERROR once, answered from memory (no new login
// attempt in the host's auth log, which fail2ban watches) until the
// password changes.
func TestPasswordAuth(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts sshdtest.Options
	}{
		{"keyboard-interactive on (sshd's default)", sshdtest.Options{}},
		{"keyboard-interactive off", sshdtest.Options{NoKbdInteractive: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Password = "hunter2-" + strings.ReplaceAll(t.Name(), " ", "_")
			testPasswordAuth(t, tc.opts)
		})
	}
}

func testPasswordAuth(t *testing.T, opts sshdtest.Options) {
	f := newFixture(t, opts)
	node := fmt.Sprintf(`
host = "127.0.0.1"
port = %d
user = %q
password = %q
agent_path = %q
max_retries = 5
retry_wait = "1h"
host_key_verification {
  host_key = %q
}
`, f.srv.Port, f.srv.User, opts.Password, f.agentPath(), f.srv.HostKeyLine())
	n := f.mustConfigure("", node)
	pingPong(t, f.launch(n), 1)
	f.l.Teardown(context.Background(), "n1")

	// A refused password is not retried (retry_wait is an hour).
	n = f.mustConfigure("", strings.Replace(node, "hunter2-", "wrong-", 1))
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		_, err := f.l.Launch(ctx, n)
		cancel()
		if err == nil || !strings.Contains(err.Error(), `authentication as "`+f.srv.User+`" refused`) || !launcher.IsPermanent(err) {
			t.Fatalf("Launch %d with a wrong password: %v (permanent %v), want a permanent refusal", i+1, err, launcher.IsPermanent(err))
		}
	}
	if got := strings.Count(f.srv.Log(), "Failed password"); got != 1 {
		t.Errorf("sshd logged %d failed passwords for 3 launches, want 1:\n%s", got, f.srv.Log())
	}
	if got := f.log.count("[ERROR] ssh.n1: launch refused"); got != 1 {
		t.Errorf("the refusal was logged at ERROR %d times, want once:\n%s", got, f.log.String())
	}
	// The right password again: the launch goes ahead.
	pingPong(t, f.launch(f.mustConfigure("", node)), 1)
}

func TestHostKeyRefused(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	other, _ := otherKey(t)
	dir := t.TempDir()

	wrongKnownHosts := filepath.Join(dir, "wrong_known_hosts")
	writeFile(t, wrongKnownHosts, fmt.Sprintf("[127.0.0.1]:%d %s\n", f.srv.Port, other))
	emptyKnownHosts := filepath.Join(dir, "empty_known_hosts")
	writeFile(t, emptyKnownHosts, "")

	cases := []struct {
		name   string
		block  string
		expect []string
	}{
		{"known_hosts mismatch", fmt.Sprintf(`known_hosts_file = %q`, wrongKnownHosts),
			[]string{"host key verification (known_hosts) failed", ssh.FingerprintSHA256(f.srv.HostKey()), ssh.FingerprintSHA256(mustParse(t, other))}},
		{"known_hosts unknown host", fmt.Sprintf(`known_hosts_file = %q`, emptyKnownHosts),
			[]string{"is not in " + emptyKnownHosts, ssh.FingerprintSHA256(f.srv.HostKey())}},
		{"manual mismatch", fmt.Sprintf(`host_key = %q`, other),
			[]string{"host key verification (manual) failed", ssh.FingerprintSHA256(f.srv.HostKey()), ssh.FingerprintSHA256(mustParse(t, other))}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			node := f.node("max_retries", "5", "retry_wait", `"1h"`, "host_key_verification", tc.block)
			n := f.mustConfigure("", node)
			_, err := f.l.Launch(context.Background(), n)
			if err == nil {
				t.Fatal("Launch succeeded")
			}
			if !launcher.IsPermanent(err) {
				t.Errorf("a refused host key is not permanent: %v", err)
			}
			for _, want := range tc.expect {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}

	// Launching again with the same known_hosts file does not contact the
	// host; the refusal was logged at ERROR once. Once the file lists the
	// right key, the launch goes ahead.
	n := f.mustConfigure("", f.node("host_key_verification", fmt.Sprintf(`known_hosts_file = %q`, wrongKnownHosts)))
	if _, err := f.l.Launch(context.Background(), n); !launcher.IsPermanent(err) {
		t.Fatalf("Launch: %v, want a permanent refusal", err)
	}
	before, errors := strings.Count(f.srv.Log(), "Connection from"), f.log.count("[ERROR] ssh.n1: launch refused")
	for range 3 {
		if _, err := f.l.Launch(context.Background(), n); !launcher.IsPermanent(err) || !strings.Contains(err.Error(), ssh.FingerprintSHA256(f.srv.HostKey())) {
			t.Fatalf("Launch again: %v, want the permanent refusal with the fingerprints", err)
		}
	}
	if got := strings.Count(f.srv.Log(), "Connection from"); got != before {
		t.Errorf("%d new connections to the host for launches already refused, want none", got-before)
	}
	if got := f.log.count("[ERROR] ssh.n1: launch refused"); got != errors {
		t.Errorf("a refusal already logged was logged again (%d times)", got-errors)
	}
	known, err := os.ReadFile(f.srv.KnownHostsFile)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, wrongKnownHosts, string(known))
	pingPong(t, f.launch(n), 1)
}

// TestAgentThatNeverSpeaksIsStopped: a remote command that never starts
// the agent (a prefix_command that does not end) fails the launch after
// launch_timeout, and nothing it started stays on the host.
func TestAgentThatNeverSpeaksIsStopped(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	// A first launch uploads the agent, so that the next ones only check
	// it (launch_timeout bounds the agent's start too, and the machine
	// may be busy).
	f.launch(f.mustConfigure("", f.baseNode())).Close()
	n := f.mustConfigure("", f.node("prefix_command", `"sleep 3601 &&"`, "launch_timeout", `"15s"`))
	c := f.launch(n)
	eventually(t, "the prefix command to run", func() bool { return slices.Contains(hostProcesses("sleep 3601"), "sleep 3601") })
	err := recvErr(t, c)
	if err == nil || !strings.Contains(err.Error(), "sent nothing within launch_timeout 15s") {
		t.Fatalf("Recv from an agent that never started: %v", err)
	}
	eventually(t, "the remote command to end", func() bool { return len(hostProcesses("sleep 3601")) == 0 })

	// Closing the connection mid-launch (the master stopping) ends the
	// remote command as well.
	n = f.mustConfigure("", f.node("prefix_command", `"sleep 3601 &&"`, "launch_timeout", `"1h"`))
	c = f.launch(n)
	eventually(t, "the prefix command to run", func() bool { return slices.Contains(hostProcesses("sleep 3601"), "sleep 3601") })
	c.Close()
	eventually(t, "the remote command to end", func() bool { return len(hostProcesses("sleep 3601")) == 0 })
}

// TestEnvNeverOnACommandLine: env values reach the agent, but no process
// on the build host shows them in its command line and no log line holds
// them, with or without a prefix_command.
func TestEnvNeverOnACommandLine(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	secret := "tok-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	dir := t.TempDir()
	record := filepath.Join(dir, "record")
	script := filepath.Join(dir, "agent.sh")
	writeFile(t, script, fmt.Sprintf("#!/bin/sh\necho \"SECRET_TOKEN=$SECRET_TOKEN\" > %q\nexec %q\n", record, pongAgent))
	global := fmt.Sprintf("agent_binary = %q", script)
	for _, prefix := range []string{"", `"sleep 2 &&"`} {
		n := f.mustConfigure(global, f.node("prefix_command", prefix, "env", fmt.Sprintf(`{ SECRET_TOKEN = %q }`, secret)))
		// Watch every command line on the host while the agent starts
		// (the prefix holds the remote shell for 2 s) and runs.
		stop, seen := make(chan struct{}), make(chan []string, 1)
		go func() {
			var found []string
			defer func() { seen <- found }()
			for {
				if ps := hostProcesses(secret); len(ps) > 0 && found == nil {
					found = ps
				}
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		c := f.launch(n)
		pingPong(t, c, 1)
		close(stop)
		if ps := <-seen; len(ps) > 0 {
			t.Errorf("prefix %s: the env value is on a command line on the build host: %q", prefix, ps)
		}
		rec, err := os.ReadFile(record)
		if err != nil || string(rec) != "SECRET_TOKEN="+secret+"\n" {
			t.Errorf("prefix %s: the agent saw %q (%v), want the value", prefix, rec, err)
		}
		f.l.Teardown(context.Background(), "n1")
	}
	if strings.Contains(f.log.String(), secret) {
		t.Errorf("the launcher logged the env value:\n%s", f.log.String())
	}
}

// hostProcesses returns the command lines of the processes on this machine
// (the build host of the tests) holding substr.
func hostProcesses(substr string) []string {
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		if cmd := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " ")); strings.Contains(cmd, substr) {
			out = append(out, cmd)
		}
	}
	return out
}

func TestManualHostKeyAccepted(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	node := f.node("host_key_verification", fmt.Sprintf("strategy = \"manual\"\nhost_key = %q", f.srv.HostKeyLine()))
	pingPong(t, f.launch(f.mustConfigure("", node)), 1)
}

func TestTrustOnFirstUse(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	node := f.node("max_retries", "3", "retry_wait", `"1h"`, "host_key_verification", `strategy = "trust_on_first_use"`)
	n := f.mustConfigure("", node)
	pingPong(t, f.launch(n), 1)
	store := filepath.Join(f.remote, "data", TOFUFile)
	stored, err := os.ReadFile(store)
	if err != nil || !strings.Contains(string(stored), strings.Fields(f.srv.HostKeyLine())[1]) {
		t.Fatalf("store %s = %q, %v; want the host key", store, stored, err)
	}
	f.l.Teardown(context.Background(), "n1")
	// Same key: accepted again.
	pingPong(t, f.launch(n), 1)
	f.l.Teardown(context.Background(), "n1")

	old := f.srv.HostKey()
	f.srv.RotateHostKey()
	_, err = f.l.Launch(context.Background(), n)
	if err == nil {
		t.Fatal("Launch accepted a changed host key")
	}
	for _, want := range []string{"changed", ssh.FingerprintSHA256(old), ssh.FingerprintSHA256(f.srv.HostKey()), store} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

// TestTrustOnFirstUseRequireApproval: with require_approval, a host's
// first key is refused, for good and with its fingerprint, until the host
// passes that fingerprint among the node's approved keys; then it is
// stored, and checked as trust_on_first_use checks it.
func TestTrustOnFirstUseRequireApproval(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	node := f.node("max_retries", "3", "retry_wait", `"1h"`, "host_key_verification", "strategy = \"trust_on_first_use\"\nrequire_approval = true")
	n := f.mustConfigure("", node)
	fp := ssh.FingerprintSHA256(f.srv.HostKey())
	for range 2 { // the second answer comes from memory
		_, err := f.l.Launch(context.Background(), n)
		if !launcher.IsPermanent(err) {
			t.Fatalf("Launch with an unapproved first key: %v, want a permanent error", err)
		}
		if got, ok := launcher.PendingApproval(err); !ok || got != fp {
			t.Fatalf("PendingApproval(%v) = %q, %v; want %q", err, got, ok, fp)
		}
		if !strings.Contains(err.Error(), fp) {
			t.Errorf("error %q does not show the fingerprint %s", err, fp)
		}
	}
	store := filepath.Join(f.remote, "data", TOFUFile)
	if b, _ := os.ReadFile(store); len(b) != 0 {
		t.Fatalf("an unapproved key was stored: %q", b)
	}
	n.ApprovedKeys = []string{"SHA256:" + strings.Repeat("A", 43), fp}
	pingPong(t, f.launch(n), 1)
	f.l.Teardown(context.Background(), "n1")
	if b, _ := os.ReadFile(store); !strings.Contains(string(b), strings.Fields(f.srv.HostKeyLine())[1]) {
		t.Fatalf("the approved key was not stored: %q", b)
	}
	// Once stored, the key is checked without needing the approval again;
	// a changed key is refused as with trust_on_first_use.
	n.ApprovedKeys = nil
	pingPong(t, f.launch(n), 1)
	f.l.Teardown(context.Background(), "n1")
	f.srv.RotateHostKey()
	if _, err := f.l.Launch(context.Background(), n); err == nil || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("Launch with a changed key: %v, want the change refused", err)
	}
}

func TestNoVerificationWarns(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	node := f.node("host_key_verification", `strategy = "none"`)
	n := f.mustConfigure("", node)
	for i := 1; i <= 2; i++ {
		pingPong(t, f.launch(n), 1)
		f.l.Teardown(context.Background(), "n1")
		if got := f.log.count("host key verification is off"); got != i {
			t.Fatalf("after launch %d: %d warnings, want %d", i, got, i)
		}
	}
}

func TestUploadOnlyWhenChanged(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	n := f.mustConfigure("", f.baseNode())
	pingPong(t, f.launch(n), 1)
	first := inode(t, f.agentPath())
	f.l.Teardown(context.Background(), "n1")
	pingPong(t, f.launch(n), 1)
	if f.l.Uploads() != 1 || inode(t, f.agentPath()) != first {
		t.Fatalf("unchanged agent re-uploaded: %d uploads, inode %d -> %d", f.l.Uploads(), first, inode(t, f.agentPath()))
	}
	// A different binary (trailing bytes do not stop an ELF from running)
	// is uploaded, replacing the file while the old agent still runs.
	newer := filepath.Join(t.TempDir(), "conveyor-agent")
	b, err := os.ReadFile(pongAgent)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, newer, string(append(b, "v2"...)))
	os.Chmod(newer, 0o755)
	n = f.mustConfigure(fmt.Sprintf("agent_binary = %q", newer), f.baseNode())
	pingPong(t, f.launch(n), 1)
	if f.l.Uploads() != 2 || inode(t, f.agentPath()) == first {
		t.Fatalf("changed agent not uploaded: %d uploads", f.l.Uploads())
	}
	got, _ := os.ReadFile(f.agentPath())
	if !bytes.Equal(got, append(b, "v2"...)) {
		t.Fatal("remote agent differs from the local one")
	}
	if st, _ := os.Stat(f.agentPath()); st.Mode().Perm() != 0o755 {
		t.Errorf("remote agent mode %v, want 0755", st.Mode())
	}
	if !strings.Contains(f.log.String(), "method=sftp") {
		t.Errorf("upload did not use sftp:\n%s", f.log.String())
	}
}

func TestUploadWithoutSFTP(t *testing.T) {
	f := newFixture(t, sshdtest.Options{NoSFTP: true})
	n := f.mustConfigure("", f.baseNode())
	pingPong(t, f.launch(n), 1)
	if !strings.Contains(f.log.String(), "method=exec") || f.l.Uploads() != 1 {
		t.Fatalf("want one upload through exec; log:\n%s", f.log.String())
	}
	f.l.Teardown(context.Background(), "n1")
	pingPong(t, f.launch(n), 1)
	if f.l.Uploads() != 1 {
		t.Fatal("unchanged agent re-uploaded")
	}
}

func TestPlatformMismatch(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	b, err := os.ReadFile(pongAgent)
	if err != nil {
		t.Fatal(err)
	}
	// Pretend the binary is for arm64: e_machine is at offset 18.
	b[18], b[19] = 183, 0
	arm := filepath.Join(t.TempDir(), "conveyor-agent")
	writeFile(t, arm, string(b))
	n := f.mustConfigure(fmt.Sprintf("agent_binary = %q", arm), f.baseNode())
	_, err = f.l.Launch(context.Background(), n)
	if err == nil || !strings.Contains(err.Error(), "built for linux/arm64") || !strings.Contains(err.Error(), "runs linux/") {
		t.Fatalf("Launch with an arm64 agent: %v", err)
	}
	if _, err := os.Stat(f.agentPath()); err == nil {
		t.Error("mismatched agent was uploaded")
	}
}

func TestAgentCommandEnvAndExit(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	dir := t.TempDir()
	record := filepath.Join(dir, "record")
	script := filepath.Join(dir, "agent.sh")
	writeFile(t, script, fmt.Sprintf(`#!/bin/sh
{ echo "args=$*"; echo "pwd=$(pwd)"; echo "GREETING=$GREETING"; echo "QUOTED=$QUOTED"; echo "WRAPPED=$WRAPPED"; } > %q
echo "agent starting" >&2
if [ -n "$FAIL" ]; then echo "cannot start: $FAIL" >&2; exit 3; fi
exec %q
`, record, pongAgent))
	global := fmt.Sprintf(`agent_binary = %q
env = { GREETING = "hello", QUOTED = "global" }`, script)
	n := f.mustConfigure(global, f.node("prefix_command", `"env WRAPPED=yes"`, "env", `{ QUOTED = "it's \"quoted\" $HOME" }`))
	c := f.launch(n)
	pingPong(t, c, 1)
	rec, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(f.remote, "work")
	for _, want := range []string{
		"args=-transport stdio -name n1 -workdir " + work,
		"pwd=" + work,
		"GREETING=hello",
		`QUOTED=it's "quoted" $HOME`,
		"WRAPPED=yes",
	} {
		if !strings.Contains(string(rec), want+"\n") {
			t.Errorf("agent saw:\n%s\nwant line %q", rec, want)
		}
	}
	f.log.waitFor(t, "agent starting", 1)
	if !strings.Contains(f.log.String(), "n1.agent") {
		t.Errorf("agent stderr not logged under the node's name:\n%s", f.log.String())
	}
	f.l.Teardown(context.Background(), "n1")

	n = f.mustConfigure(global, f.node("env", `{ FAIL = "no disk" }`))
	c = f.launch(n)
	err = recvErr(t, c)
	if err == nil || !strings.Contains(err.Error(), "exited with status 3") || !strings.Contains(err.Error(), "cannot start: no disk") {
		t.Fatalf("Recv from a failing agent: %v", err)
	}
}

func TestConnectionLostAndRelaunch(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	n := f.mustConfigure("", f.baseNode())
	c := f.launch(n)
	pingPong(t, c, 5)
	if st := f.linkStats(); !st.Connected || !strings.HasSuffix(st.Endpoint, "@"+f.srv.Addr()) || st.Since.IsZero() || st.Reconnects != 0 {
		t.Fatalf("link stats of a running agent: %+v", st)
	}
	f.srv.KillSessions()
	err := recvErr(t, c)
	want := "node n1: ssh connection to " + f.srv.Addr() + " lost"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Recv after the sessions were killed: %v, want %q", err, want)
	}
	if err := c.Send([]byte{0}); err == nil {
		t.Error("Send on a lost connection succeeded")
	}
	c.Close()
	if st := f.linkStats(); st.Connected || st.Reconnects != 0 {
		t.Fatalf("link stats of a closed connection: %+v", st)
	}

	c = f.launch(n)
	pingPong(t, c, 5)
	if st := f.linkStats(); !st.Connected || st.Reconnects != 1 {
		t.Fatalf("link stats after a relaunch: %+v", st)
	}

	// The whole server goes away and comes back.
	f.srv.Stop()
	if err := recvErr(t, c); !strings.Contains(err.Error(), want) {
		t.Fatalf("Recv after sshd stopped: %v", err)
	}
	f.srv.Start()
	pingPong(t, f.launch(n), 5)
}

func TestKeepaliveDetectsSilentPeer(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	n := f.mustConfigure("", f.node("keepalive_interval", `"1s"`))
	c := f.launch(n)
	pingPong(t, c, 1)
	f.srv.PauseSessions()
	err := recvErr(t, c)
	want := "ssh connection to " + f.srv.Addr() + " lost: no answer to a keepalive within 1s"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Recv from a silent peer: %v, want %q", err, want)
	}
	f.srv.KillSessions()
}

func TestConnectRetries(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	n := f.mustConfigure("", f.node("max_retries", "1000"))
	f.srv.Stop()

	type res struct {
		c   launcher.Conn
		err error
	}
	done := make(chan res, 1)
	go func() {
		c, err := f.l.Launch(context.Background(), n)
		done <- res{c, err}
	}()
	f.log.waitFor(t, "connect failed, retrying", 2)
	f.srv.Start()
	r := <-done
	if r.err != nil {
		t.Fatalf("Launch once sshd is back: %v", r.err)
	}
	pingPong(t, r.c, 1)
	f.l.Teardown(context.Background(), "n1")
	f.srv.Stop()

	// Cancelling the context stops the retries.
	ctx, cancel := context.WithCancel(context.Background())
	before := f.log.count("connect failed, retrying")
	go func() {
		_, err := f.l.Launch(ctx, n)
		done <- res{nil, err}
	}()
	f.log.waitFor(t, "connect failed, retrying", before+2)
	cancel()
	if r := <-done; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("Launch after cancel: %v", r.err)
	}

	// max_retries = 0: one attempt.
	n = f.mustConfigure("", f.node("max_retries", "0"))
	_, err := f.l.Launch(context.Background(), n)
	if err == nil || !strings.Contains(err.Error(), "after 1 attempt(s)") || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Launch without retries: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	good := f.baseNode()
	text := filepath.Join(t.TempDir(), "notes.txt")
	writeFile(t, text, "just some text, not a program\n")
	hkv := "host_key_verification"
	cases := []struct {
		name, global, node string
		path, substr       string
	}{
		{"empty host", "", f.node("host", `" "`), "host", "host must name"},
		{"host with user", "", f.node("host", `"root@example.com"`), "host", "not a host name"},
		{"bad port", "", f.node("port", "70000"), "port", "not a TCP port"},
		{"no credentials", "", f.node("private_key_file", ""), "private_key_file", "no credentials"},
		{"missing key file", "", f.node("private_key_file", `"/nonexistent/key"`), "private_key_file", "cannot read"},
		{"not a key", "", f.node("private_key_file", `"/etc/hostname"`), "private_key_file", "not a private key"},
		{"bad strategy", "", f.node(hkv, `strategy = "sometimes"`), "host_key_verification.strategy", "unknown strategy"},
		{"manual without key", "", f.node(hkv, `strategy = "manual"`), "host_key_verification.host_key", "needs host_key"},
		{"bad host key", "", f.node(hkv, `host_key = "ssh-ed25519 notbase64"`), "host_key_verification.host_key", "parse host key"},
		{"missing known_hosts", "", f.node(hkv, `known_hosts_file = "/nonexistent/kh"`), "host_key_verification.known_hosts_file", "known_hosts"},
		{"bad duration", "", f.node("launch_timeout", `"soon"`), "launch_timeout", "not a duration"},
		{"zero timeout", "", f.node("launch_timeout", `"0s"`), "launch_timeout", "positive"},
		{"negative retries", "", f.node("max_retries", "-1"), "max_retries", "whole number"},
		{"bad env name", "", f.node("env", `{ "A-B" = "x" }`), "env", "not a valid environment variable"},
		{"missing agent binary", `agent_binary = "/nonexistent/agent"`, good, "agent_binary", "no such file"},
		{"agent binary not executable", fmt.Sprintf("agent_binary = %q", text), good, "agent_binary", "neither an ELF"},
		{"bad global duration", fmt.Sprintf("agent_binary = %q\nretry_wait = \"x\"", pongAgent), f.node("retry_wait", ""), "retry_wait", "not a duration"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.configure(tc.global, tc.node)
			var ces launcher.ConfigErrors
			if !errors.As(err, &ces) {
				t.Fatalf("Configure: %v, want ConfigErrors", err)
			}
			for _, ce := range ces {
				if strings.Join(ce.Path, ".") == tc.path && strings.Contains(ce.Message, tc.substr) {
					return
				}
			}
			t.Fatalf("Configure: %v, want an error at %q containing %q", err, tc.path, tc.substr)
		})
	}
}

func TestValidateOnlyCreatesNothing(t *testing.T) {
	f := newFixture(t, sshdtest.Options{})
	node := f.node("host_key_verification", `strategy = "trust_on_first_use"`)
	s := schema()
	data := filepath.Join(t.TempDir(), "data")
	err := f.l.Configure(context.Background(), &launcher.Config{
		Host:   launcher.Host{DataDir: data, ValidateOnly: true},
		Global: decode(t, s.Global, fmt.Sprintf("agent_binary = %q", pongAgent)),
		Nodes:  []*launcher.Node{{Name: "n1", Config: decode(t, s.Node, node)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(data); err == nil {
		t.Error("ValidateOnly created the data directory")
	}
}

func wantConfigError(t *testing.T, err error, node, path, substr string) {
	t.Helper()
	var ces launcher.ConfigErrors
	if !errors.As(err, &ces) {
		t.Fatalf("got %v, want ConfigErrors", err)
	}
	for _, ce := range ces {
		if ce.Node == node && strings.Join(ce.Path, ".") == path && strings.Contains(ce.Message, substr) {
			return
		}
	}
	t.Fatalf("got %v, want an error for node %q at %q containing %q", err, node, path, substr)
}

func otherKey(t *testing.T) (string, ssh.PublicKey) {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ssh.NewPublicKey(pub)
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))), k
}

func mustParse(t *testing.T, line string) ssh.PublicKey {
	k, err := hostkey.ParseKey(line)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writeFile(t *testing.T, file, content string) {
	t.Helper()
	if err := os.WriteFile(file, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}

// linkStats is the launcher's report on node n1's link.
func (f *fixture) linkStats() *launcher.LinkStats {
	f.t.Helper()
	st, err := f.l.LinkStats(context.Background(), "n1")
	if err != nil {
		f.t.Fatal(err)
	}
	return st
}
