package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/conveyor-ci/conveyor/core/store"
)

const tokenUsage = `Usage:
  conveyor token create -name NAME -role read|trigger|admin
  conveyor token list
  conveyor token revoke NAME`

// cmdToken manages the API tokens (it needs an admin token): create
// prints the new token once on stdout, the server keeps only its hash.
func cmdToken(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, tokenUsage)
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("token "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	rf := remoteFlags(fs)
	var name, role *string
	if sub == "create" {
		name = fs.String("name", "", "the token's name, unique (letters, digits, '.', '_', '-')")
		role = fs.String("role", "", "read (nodes, jobs, builds, logs), trigger (also trigger and cancel builds) or admin (also node secrets, node deletion, tokens)")
	}
	pos, err := parseArgs(fs, args[1:])
	if err != nil {
		return 2
	}
	want := map[string]int{"create": 0, "list": 0, "revoke": 1}
	n, known := want[sub]
	if !known || len(pos) != n || (sub == "create" && (*name == "" || *role == "")) {
		fmt.Fprintln(stderr, tokenUsage)
		return 2
	}
	c, err := rf.client()
	if err != nil {
		fmt.Fprintf(stderr, "conveyor token %s: %v\n", sub, err)
		return 2
	}
	switch sub {
	case "create":
		r, err := store.ParseRole(*role)
		if err != nil {
			fmt.Fprintf(stderr, "conveyor token create: %v\n", err)
			return 2
		}
		t, err := c.CreateToken(ctx, *name, r)
		if err != nil {
			remoteError(stderr, "token create", apiMessage(err), err)
			return 1
		}
		fmt.Fprintln(stdout, t.Secret)
		fmt.Fprintf(stderr, "Token %s (%s role) created. It is shown this once: the server keeps only its SHA-256.\n", t.Name, t.Role)
	case "list":
		list, err := c.Tokens(ctx)
		if err != nil {
			remoteError(stderr, "token list", apiMessage(err), err)
			return 1
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLE\tCREATED")
		for _, t := range list {
			created := "-"
			if !t.CreatedAt.IsZero() {
				created = t.CreatedAt.UTC().Format("2006-01-02 15:04:05 UTC")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", t.Name, t.Role, created)
		}
		_ = tw.Flush()
	case "revoke":
		t, err := c.RevokeToken(ctx, pos[0])
		if err != nil {
			remoteError(stderr, "token revoke", apiMessage(err), err)
			return 1
		}
		fmt.Fprintf(stdout, "%s: revoked (%s role); its requests and UI sessions are refused from now on\n", t.Name, t.Role)
	}
	return 0
}
