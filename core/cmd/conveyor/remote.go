package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/conveyor-ci/conveyor/core/client"
	"github.com/conveyor-ci/conveyor/core/store"
)

// paramsFlag collects -p KEY=VALUE flags.
type paramsFlag map[string]string

func (p paramsFlag) String() string { return "" }

func (p paramsFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("parameter %q is not KEY=VALUE", v)
	}
	p[k] = val
	return nil
}

// remoteFlags adds -address to fs.
func remoteFlags(fs *flag.FlagSet) *string {
	return fs.String("address", "", "server address (default $"+client.AddrEnv+", else "+client.DefaultAddr+")")
}

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
func cmdNode(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	const nodeUsage = "Usage: conveyor node delete [-purge] NAME"
	if len(args) == 0 || args[0] != "delete" {
		fmt.Fprintln(stderr, nodeUsage)
		return 2
	}
	fs := flag.NewFlagSet("node delete", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := remoteFlags(fs)
	purge := fs.Bool("purge", false, "also delete what the node's launcher keeps for it (Kafka: its topics, with any frames left in them)")
	pos, err := parseArgs(fs, args[1:])
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, nodeUsage)
		return 2
	}
	r, err := client.New(*addr).DeleteNode(ctx, pos[0], *purge)
	if err != nil {
		fmt.Fprintf(stderr, "conveyor node delete: %s\n", apiMessage(err))
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
	addr := remoteFlags(fs)
	follow := fs.Bool("follow", false, "print the log live and exit with the build's result")
	params := paramsFlag{}
	fs.Var(params, "p", "build parameter KEY=VALUE, passed to the steps as an environment variable (repeatable)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "Usage: conveyor build [-follow] [-p KEY=VALUE]... JOB")
		return 2
	}
	job := pos[0]
	c := client.New(*addr)
	b, err := c.Trigger(ctx, job, params)
	if err != nil {
		fmt.Fprintf(stderr, "conveyor build: %v\n", err)
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
	addr := remoteFlags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	list, err := client.New(*addr).Nodes(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "conveyor nodes: %v\n", err)
		return 1
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tLAUNCHER\tEXECUTORS\tLABELS\tREASON")
	for _, n := range list {
		reason := n.Reason
		if reason == "" {
			reason = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%s\n", n.Name, n.State, n.Launcher, n.Busy, n.Executors, strings.Join(n.Labels, ","), reason)
	}
	_ = tw.Flush()
	return 0
}

func cmdSecret(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("secret", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := remoteFlags(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "Usage: conveyor secret NODE")
		return 2
	}
	s, err := client.New(*addr).Secret(ctx, pos[0])
	if err != nil {
		fmt.Fprintf(stderr, "conveyor secret: %s\n", apiMessage(err))
		return 1
	}
	fmt.Fprintf(stdout, "%s\n\nStart the agent of node %s with the secret in a file only it can read:\n\n  umask 077; echo %s > secret\n  %s\n",
		s.Secret, s.Node, s.Secret, strings.Join(s.AgentCommand, " "))
	return 0
}
