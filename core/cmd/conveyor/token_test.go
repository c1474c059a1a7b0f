//go:build linux

package main

import (
	"strings"
	"syscall"
	"testing"
)

// TestTokenCommands: conveyor token create, list and revoke with the
// bootstrap (admin) token; each role meets its boundary from the CLI; a
// build's parameters are the job's declared ones, the rest refused with
// the server's reason (issue 13: -p BASH_ENV=... ran a command).
func TestTokenCommands(t *testing.T) {
	checkNoLeftovers(t)
	dir := t.TempDir()
	s := startServer(t, dir, render(t, dir, "good.hcl"))
	run := func(args ...string) result {
		t.Helper()
		return runConveyor(t, dir, append(args, "-address", s.url)...)
	}
	admin := []string{"-token-file", s.tokenFile}
	create := func(name, role string) string {
		t.Helper()
		r := run(append([]string{"token", "create", "-name", name, "-role", role}, admin...)...)
		tok := strings.TrimSpace(r.stdout)
		if r.code != 0 || len(tok) != 64 || !strings.Contains(r.stderr, "shown this once") {
			t.Fatalf("token create %s: exit %d, %q %q", name, r.code, r.stdout, r.stderr)
		}
		return tok
	}
	ci, viewer := create("ci", "trigger"), create("viewer", "read")

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"list", append([]string{"token", "list"}, admin...), 0, "bootstrap  admin"},
		{"trigger builds", []string{"build", "hello", "-p", "TARGET=moon", "-token", ci}, 0, "Build hello#1 queued"},
		{"default applies", []string{"build", "hello", "-token", ci}, 0, "Build hello#2 queued"},
		{"undeclared BASH_ENV", []string{"build", "hello", "-p", "BASH_ENV=$(touch /tmp/x; id >&2)", "-token", ci}, 1,
			"BASH_ENV is not a parameter of the job (it declares TARGET)"},
		{"undeclared PATH", []string{"build", "hello", "-p", "PATH=/tmp", "-token", ci}, 1, "PATH is not a parameter"},
		{"invalid name", []string{"build", "hello", "-p", "a-b=1", "-token", ci}, 1, `"a-b" is no parameter name`},
		{"outside choices", []string{"build", "hello", "-p", "TARGET=mars", "-token", ci}, 1, `TARGET="mars" is not one of the choices`},
		{"empty name", []string{"build", "hello", "-p", "=x", "-token", ci}, 2, "is not NAME=VALUE"},
		{"read cannot trigger", []string{"build", "hello", "-token", viewer}, 1, "has the read role; this needs the trigger role"},
		{"read reads", []string{"nodes", "-token", viewer}, 0, "n1"},
		{"trigger cannot read secrets", []string{"secret", "n1", "-token", ci}, 1, "needs the admin role"},
		{"trigger cannot delete nodes", []string{"node", "delete", "n1", "-token", ci}, 1, "needs the admin role"},
		{"trigger cannot list tokens", []string{"token", "list", "-token", ci}, 1, "conveyor token create -role ROLE"},
		{"trigger cannot create tokens", []string{"token", "create", "-name", "x", "-role", "admin", "-token", ci}, 1, "needs the admin role"},
		{"no role", append([]string{"token", "create", "-name", "x"}, admin...), 2, "Usage"},
		{"bad role", append([]string{"token", "create", "-name", "x", "-role", "root"}, admin...), 2, `no role "root"`},
		{"duplicate", append([]string{"token", "create", "-name", "ci", "-role", "read"}, admin...), 1, `a token named "ci" exists`},
		{"revoke", append([]string{"token", "revoke", "ci"}, admin...), 0, "ci: revoked (trigger role)"},
		{"revoked", []string{"nodes", "-token", ci}, 1, "wrong API token"},
		{"revoke unknown", append([]string{"token", "revoke", "ci"}, admin...), 1, "no such token: ci"},
		{"revoke bootstrap", append([]string{"token", "revoke", "bootstrap"}, admin...), 1, "change it there and restart"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(tc.args...)
			if r.code != tc.code || !strings.Contains(r.stdout+r.stderr, tc.want) {
				t.Errorf("conveyor %s: exit %d, output %q; want exit %d and %q", strings.Join(tc.args, " "), r.code, r.stdout+r.stderr, tc.code, tc.want)
			}
		})
	}
	if log := s.log.String(); strings.Contains(log, ci) || strings.Contains(log, viewer) {
		t.Errorf("the server log holds an issued token")
	}
	// A clean stop ends the plugin and the agent it started.
	if err := s.signal(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
}
