package main

import (
	"strings"
	"testing"
)

// TestSecretHelp: the secret stands alone on the first line, never in a
// command a shell would keep in its history, and every file the agent's
// command line reads besides the secret is named with what goes in it.
func TestSecretHelp(t *testing.T) {
	for _, tc := range []struct {
		name    string
		command []string
		want    []string
		notWant []string
	}{
		{"plain", []string{"conveyor-agent", "-name", "k1", "-secret-file", "secret", "-brokers", "127.0.0.1:9092"},
			nil, []string{"sasl-password", "agent.pem"}},
		{"sasl and mtls", []string{"conveyor-agent", "-name", "k1", "-secret-file", "secret", "-tls-ca", "/etc/ca.pem",
			"-tls-cert", "agent.pem", "-tls-key", "agent-key.pem", "-sasl-mechanism", "SCRAM-SHA-512", "-sasl-user", "k1",
			"-sasl-password-file", "sasl-password"},
			[]string{"# sasl-password: the node's own Kafka password", "# agent.pem: the node's own client certificate",
				"# agent-key.pem: the key of that certificate"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const secret = "00ff00ff00ff00ff00ff00ff00ff00ff"
			out := secretHelp(secret, "k1", tc.command)
			lines := strings.Split(out, "\n")
			if lines[0] != secret || strings.Count(out, secret) != 1 {
				t.Fatalf("the secret must be the first line and appear once:\n%s", out)
			}
			if !strings.Contains(out, "conveyor secret k1 | head -n 1 > secret") || !strings.Contains(out, "  "+strings.Join(tc.command, " ")+"\n") {
				t.Fatalf("missing the commands:\n%s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("missing %q:\n%s", w, out)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(out, w) {
					t.Errorf("unexpected %q:\n%s", w, out)
				}
			}
		})
	}
}
