// Command conveyor-bench measures Conveyor against the baselines users
// know, side by side in one run: step round trips, output streaming, cancel
// latency, a thousand agents on one server and the go-plugin hop, over the
// Kafka launcher (embedded broker on loopback), the SSH launcher (a real
// sshd on loopback) and the local-process launcher. It drives the built
// binaries (make build), prints one table with PASS/FAIL beside each target
// and writes it as markdown, with the machine it ran on, into
// docs/PERFORMANCE.md between the generated-section markers (the analysis
// around them is kept).
//
// Usage:
//
//	conveyor-bench [-bin DIR] [-out FILE] [-size 256MiB] [-runs 1000] [-agents 1000] [-only LIST]
//
// Smaller sizes smoke-test it quickly: -size 16MiB -runs 100 -agents 100.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/conveyor-ci/conveyor/bench/harness"
	"github.com/conveyor-ci/conveyor/bench/report"
)

// sections are the parts of a run, in order; -only picks some.
var sections = []string{"session", "server", "scale"}

type options struct {
	bin, out, work       string
	size                 int64
	runs, agents, rounds int
	cancels              int
	idle                 time.Duration
	only                 []string
	cpuProfile           string
	heapProfile          string
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("conveyor-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.bin, "bin", "bin", "directory of the built binaries (make build)")
	fs.StringVar(&o.out, "out", "docs/PERFORMANCE.md", "markdown file to write the results into (empty: none)")
	fs.StringVar(&o.work, "work", "", "directory for the run's data (default: a new temporary directory, removed afterwards)")
	size := fs.String("size", "256MiB", "bytes a streaming step prints (and cancel, plugin hop, kcat, ssh cat move)")
	fs.IntVar(&o.runs, "runs", 1000, "step round trips per transport")
	fs.IntVar(&o.agents, "agents", 1000, "agents connected to one server in the scale section")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds of each throughput measurement (the median counts)")
	fs.IntVar(&o.cancels, "cancels", 5, "cancels per transport")
	fs.DurationVar(&o.idle, "idle", 30*time.Second, "how long idle agents' heartbeat CPU is sampled")
	only := fs.String("only", strings.Join(sections, ","), "sections to run: "+strings.Join(sections, ", "))
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write the bench process's CPU profile (in-process master and agents) to this file")
	fs.StringVar(&o.heapProfile, "heapprofile", "", "write the bench process's heap profile after the scale section to this file")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if o.size, err = report.ParseSize(*size); err != nil {
		return nil, err
	}
	if o.runs < 1 || o.agents < 1 || o.rounds < 1 || o.cancels < 1 {
		return nil, fmt.Errorf("-runs, -agents, -rounds and -cancels must be positive")
	}
	for _, s := range strings.Split(*only, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !slices.Contains(sections, s) {
			return nil, fmt.Errorf("-only: unknown section %q (want %s)", s, strings.Join(sections, ", "))
		}
		o.only = append(o.only, s)
	}
	return o, nil
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err == flag.ErrHelp {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "conveyor-bench: %v\n", err)
		return 2
	}
	if o.bin, err = filepath.Abs(o.bin); err != nil {
		fmt.Fprintf(stderr, "conveyor-bench: %v\n", err)
		return 2
	}
	for _, b := range []string{"conveyor", "conveyor-agent", "conveyor-launcher-kafka", "conveyor-launcher-ssh", "conveyor-launcher-local"} {
		if _, err := os.Stat(filepath.Join(o.bin, b)); err != nil {
			fmt.Fprintf(stderr, "conveyor-bench: %v (run make build first)\n", err)
			return 2
		}
	}
	work := o.work
	if work == "" {
		if work, err = os.MkdirTemp("", "conveyor-bench-"); err != nil {
			fmt.Fprintf(stderr, "conveyor-bench: %v\n", err)
			return 1
		}
		defer os.RemoveAll(work)
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "conveyor-bench: %v\n", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(stderr, "conveyor-bench: %v\n", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}

	startLoad := report.LoadAverage()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b := &bench{opts: o, work: work, log: stderr, res: &results{},
		rep: &report.Report{Machine: report.ThisMachine(), Started: time.Now(), Command: "conveyor-bench " + strings.Join(args, " ")}}
	if len(args) == 0 {
		b.rep.Command = "conveyor-bench (defaults)"
	}
	b.logf("writing %s of test data", report.Size(o.size))
	if b.data, err = writeData(filepath.Join(work, "data.txt"), o.size); err != nil {
		fmt.Fprintf(stderr, "conveyor-bench: %v\n", err)
		return 1
	}
	steps := map[string]func(context.Context, *harness.T){
		"session": b.sessionSection,
		"server":  b.serverSection,
		"scale":   b.scaleSection,
	}
	for _, s := range sections {
		if !slices.Contains(o.only, s) || ctx.Err() != nil {
			continue
		}
		b.logf("== %s", s)
		start := time.Now()
		if err := harness.Run(s, stderr, func(t *harness.T) { steps[s](ctx, t) }); err != nil {
			b.logf("%v", err)
			b.res.errors = append(b.res.errors, err.Error())
		}
		b.logf("== %s took %s", s, time.Since(start).Round(time.Second))
	}
	b.rep.Took = time.Since(b.rep.Started)
	b.rep.Machine.Load = startLoad + " -> " + report.LoadAverage()
	b.table()

	fmt.Fprintln(stdout)
	if err := b.rep.Text(stdout); err != nil {
		fmt.Fprintf(stderr, "conveyor-bench: %v\n", err)
		return 1
	}
	if o.out != "" {
		if err := writeMarkdown(o.out, b.rep.Markdown()); err != nil {
			fmt.Fprintf(stderr, "conveyor-bench: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "\nwritten to %s\n", o.out)
	}
	if len(b.res.errors) > 0 || ctx.Err() != nil {
		return 1
	}
	return 0
}

// writeMarkdown puts the generated section into the file, keeping what
// surrounds it.
func writeMarkdown(path, generated string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	doc, err := report.Splice(string(old), generated)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return os.WriteFile(path, []byte(doc), 0o644)
}

// bench is one run.
type bench struct {
	opts *options
	work string
	data string // the test data file, opts.size bytes
	log  io.Writer
	rep  *report.Report
	res  *results
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}
