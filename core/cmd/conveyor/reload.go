package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/core/server"
)

// cmdReload asks a running server to reload its configuration.
func cmdReload(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rf := remoteFlags(fs)
	force := fs.Bool("force", false, "relaunch changed or removed nodes and restart changed launchers at once, failing their running builds")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "Usage: conveyor reload [-force]")
		return 2
	}
	c, err := rf.client()
	if err != nil {
		fmt.Fprintf(stderr, "conveyor reload: %v\n", err)
		return 2
	}
	res, err := c.Reload(ctx, *force)
	if err != nil {
		remoteError(stderr, "reload", apiMessage(err), err)
		return 1
	}
	return printReload(stdout, stderr, res)
}

// printReload prints a reload's outcome; its exit code is 1 when the
// configuration was refused.
func printReload(stdout, stderr io.Writer, res *server.ReloadResult) int {
	if !res.OK {
		fmt.Fprintf(stderr, "configuration refused, nothing changed:\n%s\n", res.Error)
		return 1
	}
	if len(res.Changes)+len(res.Pending) == 0 {
		fmt.Fprintln(stdout, "configuration reloaded: no change")
	} else {
		fmt.Fprintln(stdout, "configuration reloaded:")
	}
	for _, c := range res.Changes {
		fmt.Fprintf(stdout, "  %s\n", c)
	}
	for _, p := range res.Pending {
		fmt.Fprintf(stdout, "  pending: %s\n", p)
	}
	for _, n := range res.NeedsRestart {
		fmt.Fprintf(stdout, "  needs restart: %s changed; it applies when the server restarts\n", n)
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(stderr, "  warning: %s\n", w)
	}
	return 0
}

// notifySIGHUP catches SIGHUP from now on (its default action ends the
// process: a SIGHUP while the server starts must not).
func notifySIGHUP() chan os.Signal {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup
}

// reloadOnSIGHUP reloads srv's configuration at every SIGHUP caught on hup
// until ctx ends; the outcome is logged (Server.Reload). SIGHUPs during a
// reload make one more.
func reloadOnSIGHUP(ctx context.Context, hup chan os.Signal, srv *server.Server, logger hclog.Logger) {
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				logger.Info("SIGHUP: reloading the configuration")
				srv.Reload(ctx, server.ReloadSIGHUP, "", false)
			}
		}
	}()
}
