package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		err  string
		want func(*options) bool
	}{
		{name: "kafka", args: []string{"-name", "n", "-secret-file", "s", "-brokers", "b:9092", "-workdir", "w"},
			want: func(o *options) bool {
				return o.transport == "kafka" && o.brokers == "b:9092" && o.heartbeat == 5*time.Second
			}},
		{name: "env", env: map[string]string{"CONVEYOR_AGENT_NAME": "n", "CONVEYOR_AGENT_SECRET": "ab", "CONVEYOR_AGENT_BROKERS": "b", "CONVEYOR_AGENT_WORKDIR": "w", "CONVEYOR_AGENT_SASL_USER": "u", "CONVEYOR_AGENT_SASL_MECHANISM": "PLAIN", "CONVEYOR_AGENT_HEARTBEAT": "2s"},
			want: func(o *options) bool { return o.name == "n" && o.saslUser == "u" && o.heartbeat == 2*time.Second }},
		{name: "flag beats env", args: []string{"-name", "flag"}, env: map[string]string{"CONVEYOR_AGENT_NAME": "env", "CONVEYOR_AGENT_TRANSPORT": "stdio", "CONVEYOR_AGENT_WORKDIR": "w"},
			want: func(o *options) bool { return o.name == "flag" && o.transport == "stdio" }},
		{name: "stdio needs no secret", args: []string{"-transport", "stdio", "-name", "n", "-workdir", "w"},
			want: func(o *options) bool { return o.secret == "" }},
		{name: "stdio needs no name", args: []string{"-transport", "stdio", "-workdir", "w"},
			want: func(o *options) bool { return o.name == "" }},
		{name: "no name", args: []string{"-workdir", "w", "-secret", "ab", "-brokers", "b"}, err: "-name is required"},
		{name: "no workdir", args: []string{"-transport", "stdio"}, err: "-workdir is required"},
		{name: "all kafka flags", args: []string{"-name", "n", "-secret", "ab", "-brokers", "b1:9092, b2:9092", "-topic-prefix", "ci.", "-tls-ca", "ca.pem", "-tls-cert", "c.pem", "-tls-key", "k.pem", "-tls-insecure-skip-verify", "-sasl-mechanism", "SCRAM-SHA-512", "-sasl-user", "u", "-sasl-password", "p", "-workdir", "w", "-heartbeat", "1s", "-heartbeat-timeout", "10s", "-drain-timeout", "1m", "-log-level", "debug"},
			want: func(o *options) bool {
				return o.topicPrefix == "ci." && o.tlsCA == "ca.pem" && o.tlsInsecure && o.saslMechanism == "SCRAM-SHA-512" && o.heartbeatTimeout == 10*time.Second && o.drainTimeout == time.Minute && o.logLevel == "debug"
			}},
		{name: "bool from env", args: []string{"-name", "n", "-secret", "ab", "-brokers", "b", "-workdir", "w"}, env: map[string]string{"CONVEYOR_AGENT_TLS_INSECURE_SKIP_VERIFY": "true", "CONVEYOR_AGENT_SASL_PASSWORD_FILE": "pw", "CONVEYOR_AGENT_SASL_MECHANISM": "PLAIN"},
			want: func(o *options) bool { return o.tlsInsecure && o.saslPassFile == "pw" }},
		{name: "sasl without mechanism", args: []string{"-transport", "stdio", "-workdir", "w", "-sasl-user", "u"}, err: "need -sasl-mechanism"},
		{name: "both sasl passwords", args: []string{"-transport", "stdio", "-workdir", "w", "-sasl-mechanism", "PLAIN", "-sasl-password", "p", "-sasl-password-file", "f"}, err: "not both"},
		{name: "cert without key", args: []string{"-transport", "stdio", "-workdir", "w", "-tls-cert", "c.pem"}, err: "-tls-key together"},
		{name: "bad log level", args: []string{"-transport", "stdio", "-workdir", "w", "-log-level", "loud"}, err: "-log-level"},
		{name: "negative drain timeout", args: []string{"-transport", "stdio", "-workdir", "w", "-drain-timeout", "-1s"}, err: "-drain-timeout"},
		{name: "no brokers", args: []string{"-name", "n", "-workdir", "w", "-secret", "ab"}, err: "-brokers is required"},
		{name: "no secret", args: []string{"-name", "n", "-workdir", "w", "-brokers", "b"}, err: "-secret-file (or -secret) is required"},
		{name: "both secrets", args: []string{"-name", "n", "-workdir", "w", "-brokers", "b", "-secret", "ab", "-secret-file", "f"}, err: "not both"},
		{name: "bad transport", args: []string{"-name", "n", "-workdir", "w", "-transport", "tcp"}, err: `-transport "tcp"`},
		{name: "bad env", env: map[string]string{"CONVEYOR_AGENT_HEARTBEAT": "soon"}, err: "$CONVEYOR_AGENT_HEARTBEAT"},
		{name: "session defaults", args: []string{"-transport", "stdio", "-workdir", "w"},
			want: func(o *options) bool { return o.sessionTimeout == 5*time.Minute && o.bufferMiB == 8 }},
		{name: "session flags", args: []string{"-transport", "stdio", "-workdir", "w", "-session-timeout", "1h"}, env: map[string]string{"CONVEYOR_AGENT_BUFFER_MIB": "32"},
			want: func(o *options) bool { return o.sessionTimeout == time.Hour && o.bufferMiB == 32 }},
		{name: "no buffer", args: []string{"-transport", "stdio", "-workdir", "w", "-buffer-mib", "0"}, err: "-buffer-mib 0: want at least 1"},
		{name: "bad buffer env", args: []string{"-transport", "stdio", "-workdir", "w"}, env: map[string]string{"CONVEYOR_AGENT_BUFFER_MIB": "lots"}, err: "$CONVEYOR_AGENT_BUFFER_MIB"},
		{name: "heartbeat above timeout", args: []string{"-name", "n", "-workdir", "w", "-transport", "stdio", "-heartbeat", "1m"}, err: "-heartbeat must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, kv := range os.Environ() {
				if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, envPrefix) {
					t.Setenv(k, "")
					os.Unsetenv(k)
				}
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			o, err := parse(tc.args, io.Discard)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || !tc.want(o) {
				t.Fatalf("options %+v, err %v", o, err)
			}
		})
	}
}

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("00ff10\n"), 0o600)
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("not hex"), 0o600)
	if s, err := (&options{secretFile: good}).readSecret(); err != nil || !bytes.Equal(s, []byte{0, 0xff, 0x10}) {
		t.Fatalf("secret %x, %v", s, err)
	}
	if _, err := (&options{secretFile: bad}).readSecret(); err == nil || !strings.Contains(err.Error(), "must be hex") {
		t.Fatalf("bad secret: %v", err)
	}
}

// TestUsageExitCodes: a usage error exits 2 with a message naming it.
func TestUsageExitCodes(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"-transport", "stdio"}, strings.NewReader(""), io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "-workdir is required") {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	stderr.Reset()
	if code := run([]string{"-name", "n", "-secret", "ab", "-brokers", "127.0.0.1:9092", "-workdir", "w", "-sasl-mechanism", "MD5", "-sasl-user", "u", "-sasl-password", "p"}, strings.NewReader(""), io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "MD5") {
		t.Fatalf("bad SASL mechanism: exit %d, stderr %q", code, stderr.String())
	}
	stderr.Reset()
	if code := run([]string{"-bogus"}, strings.NewReader(""), io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "Usage") {
		t.Fatalf("unknown flag: exit %d, stderr %q", code, stderr.String())
	}
	// stdio with the master gone (stdin at EOF): exit 0.
	if code := run([]string{"-transport", "stdio", "-name", "n", "-workdir", t.TempDir()}, strings.NewReader(""), io.Discard, io.Discard); code != 0 {
		t.Fatalf("stdio at EOF: exit %d", code)
	}
}

func TestStepEnv(t *testing.T) {
	got := stepEnv([]string{"PATH=/bin", "CONVEYOR_AGENT_SECRET=00", "CONVEYOR_AGENT_SASL_PASSWORD=x", "CONVEYOR_OTHER=1"})
	if strings.Join(got, " ") != "PATH=/bin CONVEYOR_OTHER=1" {
		t.Fatalf("step env %q", got)
	}
}
