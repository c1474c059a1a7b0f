package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/conveyor-ci/conveyor/core/client"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/server"
	"github.com/conveyor-ci/conveyor/core/store"
)

// paramsFlag collects -p NAME=VALUE flags. Which names and values a job
// takes is the server's to say (the job's param blocks).
type paramsFlag map[string]string

func (p paramsFlag) String() string { return "" }

func (p paramsFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("parameter %q is not NAME=VALUE", v)
	}
	if _, dup := p[k]; dup {
		return fmt.Errorf("parameter %s is given twice", k)
	}
	p[k] = val
	return nil
}

// tokenHint is printed under an error when the server refused the token.
const tokenHint = "hint: the API needs its token: set " + client.TokenEnv + " or -token-file DATA_DIR/" + server.TokenFileName +
	" (the server writes it there at first start unless server.api.token is set)"

// remote holds the flags of commands that talk to a server.
type remote struct {
	address, token, tokenFile *string
}

// remoteFlags adds -address, -token and -token-file to fs.
func remoteFlags(fs *flag.FlagSet) remote {
	return remote{
		address:   fs.String("address", "", "server address (default $"+client.AddrEnv+", else "+client.DefaultAddr+")"),
		token:     fs.String("token", "", "API token (default $"+client.TokenEnv+"; prefer -token-file: a command line is visible to other users)"),
		tokenFile: fs.String("token-file", "", "file holding the API token, e.g. DATA_DIR/"+server.TokenFileName+" (default $"+client.TokenFileEnv+")"),
	}
}

// client returns an API client for the flags, the token taken from -token,
// else -token-file, else $CONVEYOR_TOKEN, else $CONVEYOR_TOKEN_FILE.
func (r remote) client() (*client.Client, error) {
	tok, err := resolveToken(*r.token, *r.tokenFile, os.Getenv(client.TokenEnv), os.Getenv(client.TokenFileEnv))
	if err != nil {
		return nil, err
	}
	return client.New(*r.address, client.WithToken(tok)), nil
}

// resolveToken picks the API token from the flags, else the environment;
// a file is read. No source at all is no token.
func resolveToken(flagToken, flagFile, envToken, envFile string) (string, error) {
	switch {
	case flagToken != "" && flagFile != "":
		return "", errors.New("-token and -token-file are exclusive")
	case flagToken != "":
		return flagToken, nil
	case flagFile != "":
		return client.ReadTokenFile(flagFile)
	case envToken != "":
		return envToken, nil
	case envFile != "":
		return client.ReadTokenFile(envFile)
	}
	return "", nil
}

// remoteError prints a failed remote command's error, msg, with the hint
// when the server refused the token.
func remoteError(stderr io.Writer, cmd, msg string, err error) {
	fmt.Fprintf(stderr, "conveyor %s: %s\n", cmd, msg)
	var apiErr *client.APIError
	switch {
	case errors.As(err, &apiErr) && apiErr.Unauthorized():
		fmt.Fprintln(stderr, tokenHint)
	case errors.As(err, &apiErr) && apiErr.Forbidden():
		fmt.Fprintln(stderr, roleHint)
	}
}

// roleHint is printed under an error when the token's role is too small.
const roleHint = "hint: tokens have roles (read < trigger < admin); an admin creates one that may do this with: conveyor token create -role ROLE -name NAME"

// parseArgs parses flags wherever they appear among the positional
// arguments ("build JOB -follow" as well as "build -follow JOB") and returns
// the positional ones. A "--" ends flag parsing.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// cmdNode manages one node: `conveyor node delete NAME [-purge]`.
const nodeUsage = `Usage:
  conveyor node show NAME                  the node's state and history
  conveyor node drain [-reason TEXT] NAME  take no new build (running ones finish)
  conveyor node online NAME                take builds again after a drain
  conveyor node disconnect [-reason TEXT] NAME
                                           end the agent's link now
  conveyor node launch NAME                launch now, skipping the backoff
  conveyor node approve-key NAME FINGERPRINT
                                           approve the host key waiting for it
  conveyor node delete [-purge] NAME       forget a node removed from the configuration`

func cmdNode(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, nodeUsage)
		return 2
	}
	switch sub := args[0]; sub {
	case "delete":
		return cmdNodeDelete(ctx, args[1:], stdout, stderr)
	case "show":
		return cmdNodeShow(ctx, args[1:], stdout, stderr)
	case nodes.ActionDrain, nodes.ActionOnline, nodes.ActionDisconnect, nodes.ActionLaunch, nodes.ActionApproveKey:
		return cmdNodeControl(ctx, sub, args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "conveyor node: unknown command %q\n%s\n", sub, nodeUsage)
		return 2
	}
}

// cmdNodeControl applies one node control and prints the node's state
// after it.
func cmdNodeControl(ctx context.Context, action string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("node "+action, flag.ContinueOnError)
	fs.SetOutput(stderr)
	rf := remoteFlags(fs)
	var reason *string
	if action == nodes.ActionDrain || action == nodes.ActionDisconnect {
		reason = fs.String("reason", "", "why, kept in the node's history")
	}
	pos, err := parseArgs(fs, args)
	if err != nil {
		return 2
	}
	want := 1
	if action == nodes.ActionApproveKey {
		want = 2
	}
	if len(pos) != want {
		fmt.Fprintln(stderr, nodeUsage)
		return 2
	}
	var req server.NodeControlRequest
	if reason != nil {
		req.Reason = *reason
	}
	if action == nodes.ActionApproveKey {
		req.Fingerprint = pos[1]
	}
	c, err := rf.client()
	if err != nil {
		fmt.Fprintf(stderr, "conveyor node %s: %v\n", action, err)
		return 2
	}
	st, err := c.ControlNode(ctx, pos[0], action, req)
	if err != nil {
		remoteError(stderr, "node "+action, apiMessage(err), err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: %s\n", st.Name, nodeLine(*st))
	return 0
}

// nodeLine says a node's state in one line: its state and reason, and
// whether it is drained.
func nodeLine(st nodes.Status) string {
	line := st.State
	if st.Reason != "" {
		line += " (" + st.Reason + ")"
	}
	if d := st.Drain; d != nil {
		line += fmt.Sprintf("; drained by %s since %s", d.By, d.Since.Format(time.RFC3339))
		if d.Reason != "" {
			line += ": " + d.Reason
		}
	}
	if st.PendingHostKey != "" {
		line += "; host key " + st.PendingHostKey + " waits for approval"
	}
	return line
}

func cmdNodeShow(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("node show", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rf := remoteFlags(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, nodeUsage)
		return 2
	}
	c, err := rf.client()
	if err != nil {
		fmt.Fprintf(stderr, "conveyor node show: %v\n", err)
		return 2
	}
	d, err := c.Node(ctx, pos[0])
	if err != nil {
		remoteError(stderr, "node show", apiMessage(err), err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: %s\navailability: %s\n", d.Name, nodeLine(d.Status), d.Availability)
	if len(d.History) > 0 {
		fmt.Fprintln(stdout, "history:")
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		for _, ev := range d.History {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", ev.Time.Format(time.RFC3339), ev.Action, ev.By, ev.Reason)
		}
		_ = tw.Flush()
	}
	return 0
}

func cmdNodeDelete(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("node delete", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rf := remoteFlags(fs)
	purge := fs.Bool("purge", false, "also delete what the node's launcher keeps for it (Kafka: its topics, with any frames left in them)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, nodeUsage)
		return 2
	}
	c, err := rf.client()
	if err != nil {
		fmt.Fprintf(stderr, "conveyor node delete: %v\n", err)
		return 2
	}
	r, err := c.DeleteNode(ctx, pos[0], *purge)
	if err != nil {
		remoteError(stderr, "node delete", apiMessage(err), err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: %s\n", r.Node, r.Message)
	return 0
}

// apiMessage is the server's message for an API error, else the error.
func apiMessage(err error) string {
	var apiErr *client.APIError
	if errors.As(err, &apiErr) {
		return apiErr.Message
	}
	return err.Error()
}

// cmdBuild triggers a build; with -follow it prints the log live and exits
// with the build's result (0 success, 1 otherwise).
func cmdBuild(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rf := remoteFlags(fs)
	follow := fs.Bool("follow", false, "print the log live and exit with the build's result")
	params := paramsFlag{}
	fs.Var(params, "p", "build parameter NAME=VALUE, one the job declares (param block), passed to the steps as an environment variable (repeatable)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "Usage: conveyor build [-follow] [-p NAME=VALUE]... JOB")
		return 2
	}
	job := pos[0]
	c, err := rf.client()
	if err != nil {
		fmt.Fprintf(stderr, "conveyor build: %v\n", err)
		return 2
	}
	b, err := c.Trigger(ctx, job, params)
	if err != nil {
		remoteError(stderr, "build", apiMessage(err), err)
		return 1
	}
	fmt.Fprintf(stderr, "Build %s#%d queued\n", b.Job, b.Number)
	if !*follow {
		return 0
	}
	var offset int64
	for {
		offset, err = c.Log(ctx, job, b.Number, offset, true, stdout)
		if ctx.Err() != nil {
			fmt.Fprintf(stderr, "\nStopped following %s#%d; the build goes on.\n", job, b.Number)
			return 130
		}
		got, gerr := c.Build(ctx, job, b.Number)
		if gerr == nil && store.Finished(got.Status) && err == nil {
			return report(stderr, got)
		}
		var apiErr *client.APIError
		if errors.As(gerr, &apiErr) && apiErr.Unauthorized() { // retrying cannot help
			remoteError(stderr, "build", gerr.Error(), gerr)
			return 1
		}
		// The stream broke (server restart, network): resume where it stopped.
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func report(stderr io.Writer, b *store.Build) int {
	msg := fmt.Sprintf("Build %s#%d: %s", b.Job, b.Number, b.Status)
	if b.Reason != "" {
		msg += " (" + b.Reason + ")"
	}
	if b.StartedAt != nil && b.FinishedAt != nil {
		msg += fmt.Sprintf(" in %s", b.FinishedAt.Sub(*b.StartedAt).Round(time.Millisecond))
	}
	fmt.Fprintln(stderr, msg)
	if b.Status == store.StatusSuccess {
		return 0
	}
	return 1
}

func cmdNodes(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nodes", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rf := remoteFlags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c, err := rf.client()
	if err != nil {
		fmt.Fprintf(stderr, "conveyor nodes: %v\n", err)
		return 2
	}
	list, err := c.Nodes(ctx)
	if err != nil {
		remoteError(stderr, "nodes", err.Error(), err)
		return 1
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tLAUNCHER\tEXECUTORS\tLABELS\tREASON")
	for _, n := range list {
		reason := n.Reason
		if reason == "" {
			reason = "-"
		}
		state := n.State
		if n.Drain != nil {
			state += ",drained"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%s\n", n.Name, state, n.Launcher, n.Busy, n.Executors, strings.Join(n.Labels, ","), reason)
	}
	_ = tw.Flush()
	return 0
}

func cmdSecret(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("secret", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rf := remoteFlags(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "Usage: conveyor secret NODE")
		return 2
	}
	c, err := rf.client()
	if err != nil {
		fmt.Fprintf(stderr, "conveyor secret: %v\n", err)
		return 2
	}
	s, err := c.Secret(ctx, pos[0])
	if err != nil {
		remoteError(stderr, "secret", apiMessage(err), err)
		return 1
	}
	fmt.Fprint(stdout, secretHelp(s.Secret, s.Node, s.AgentCommand))
	return 0
}

// agentFileFlags are the agent's flags naming a file the operator puts in
// place, and what goes in it.
var agentFileFlags = []struct{ flag, what string }{
	{"-sasl-password-file", "the node's own Kafka password"},
	{"-tls-cert", "the node's own client certificate (PEM)"},
	{"-tls-key", "the key of that certificate (PEM)"},
}

// secretHelp is what `conveyor secret` prints: the secret alone on the
// first line (for scripts), then how to start the node's agent with it,
// naming every other file its command line reads.
func secretHelp(secret, node string, command []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\nStart the agent of node %s in a directory only it can read, with the secret (the first line above) in the file secret:\n\n", secret, node)
	fmt.Fprintf(&b, "  umask 077; conveyor secret %s | head -n 1 > secret\n", node)
	for i := 0; i+1 < len(command); i++ {
		for _, f := range agentFileFlags {
			if command[i] == f.flag {
				fmt.Fprintf(&b, "  # %s: %s\n", command[i+1], f.what)
			}
		}
	}
	fmt.Fprintf(&b, "  %s\n", strings.Join(command, " "))
	return b.String()
}
