// Command conveyor-agent runs on a build host: it connects to the Conveyor
// master over Kafka (or over stdin/stdout when a launcher started it, e.g.
// over SSH), proves it holds its node's secret, and runs build steps.
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/agent/backoff"
	"github.com/conveyor-ci/conveyor/agent/session"
	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// envPrefix prefixes the environment variable of every flag.
const envPrefix = "CONVEYOR_AGENT_"

// Reconnect backoff bounds.
const (
	backoffMin = 500 * time.Millisecond
	backoffMax = 30 * time.Second
)

type options struct {
	name, secret, secretFile     string
	brokers, topicPrefix         string
	tls                          bool
	tlsCA, tlsCert, tlsKey       string
	tlsInsecure                  bool
	saslMechanism, saslUser      string
	saslPassword, saslPassFile   string
	workdir, transport, logLevel string
	heartbeat, heartbeatTimeout  time.Duration
	drainTimeout, sessionTimeout time.Duration
	bufferMiB                    int
	showVersion                  bool
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// envName is the environment variable of a flag: -sasl-user is
// CONVEYOR_AGENT_SASL_USER.
func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parse reads flags, taking each flag's default from its environment
// variable; a flag given on the command line wins.
func parse(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("conveyor-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	str := func(p *string, name, def, usage string) {
		fs.StringVar(p, name, def, usage+" ($"+envName(name)+")")
	}
	boolean := func(p *bool, name, usage string) {
		fs.BoolVar(p, name, false, usage+" ($"+envName(name)+")")
	}
	dur := func(p *time.Duration, name string, def time.Duration, usage string) {
		fs.DurationVar(p, name, def, usage+" ($"+envName(name)+")")
	}
	str(&o.name, "name", "", "the node's name (required with the kafka transport)")
	str(&o.secret, "secret", "", "the node's secret in hex, as `conveyor secret NODE` prints it (prefer -secret-file)")
	str(&o.secretFile, "secret-file", "", "file holding the node's secret in hex")
	str(&o.transport, "transport", "kafka", "kafka, or stdio (frames on stdin/stdout; used by launchers that start the agent)")
	str(&o.brokers, "brokers", "", "Kafka bootstrap brokers, comma-separated (kafka transport)")
	str(&o.topicPrefix, "topic-prefix", kafkatransport.DefaultTopicPrefix, "Kafka topic prefix")
	boolean(&o.tls, "tls", "connect to Kafka with TLS using the system's CAs")
	str(&o.tlsCA, "tls-ca", "", "CA certificate file for Kafka TLS")
	str(&o.tlsCert, "tls-cert", "", "client certificate file for Kafka mTLS")
	str(&o.tlsKey, "tls-key", "", "client key file for Kafka mTLS")
	boolean(&o.tlsInsecure, "tls-insecure-skip-verify", "do not verify the brokers' certificates")
	str(&o.saslMechanism, "sasl-mechanism", "", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
	str(&o.saslUser, "sasl-user", "", "SASL user name")
	str(&o.saslPassword, "sasl-password", "", "SASL password (prefer -sasl-password-file)")
	str(&o.saslPassFile, "sasl-password-file", "", "file holding the SASL password")
	str(&o.workdir, "workdir", "", "directory holding the builds' workspaces (required)")
	dur(&o.heartbeat, "heartbeat", 5*time.Second, "ping interval")
	dur(&o.heartbeatTimeout, "heartbeat-timeout", 30*time.Second, "how long the master may stay silent before the agent reconnects")
	dur(&o.drainTimeout, "drain-timeout", 5*time.Minute, "on SIGTERM, how long running steps may take before they are cancelled")
	dur(&o.sessionTimeout, "session-timeout", session.DefaultSessionTimeout, "how long steps keep running, their output buffered, while the master is out of reach")
	fs.IntVar(&o.bufferMiB, "buffer-mib", session.DefaultOutboxBytes>>20, "MiB of step output and artifact data kept until the master acknowledges it; a step printing (or a transfer sending) more waits ($"+envName("buffer-mib")+")")
	str(&o.logLevel, "log-level", "info", "trace, debug, info, warn or error")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage:
  conveyor-agent -name NODE -secret-file FILE -brokers HOST:PORT[,...] -workdir DIR [flags]
  conveyor-agent -transport stdio [-name NODE] [-secret-file FILE] -workdir DIR [flags]

Every flag can also be set with the environment variable
CONVEYOR_AGENT_<FLAG> (e.g. CONVEYOR_AGENT_SASL_PASSWORD_FILE); the command
line wins. Logs go to stderr; with -transport stdio, stdout carries frames only.

Flags:
`)
		fs.PrintDefaults()
	}

	// Environment first, so that the command line overrides it.
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if v, ok := os.LookupEnv(envName(f.Name)); ok && envErr == nil {
			if err := f.Value.Set(v); err != nil {
				envErr = fmt.Errorf("$%s: %v", envName(f.Name), err)
			}
		}
	})
	if envErr != nil {
		return nil, envErr
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.bufferMiB < 1 {
		return nil, fmt.Errorf("-buffer-mib %d: want at least 1", o.bufferMiB)
	}
	if o.showVersion {
		return o, nil
	}
	switch {
	case o.transport != "kafka" && o.transport != "stdio":
		return nil, fmt.Errorf("-transport %q: want kafka or stdio", o.transport)
	case o.name == "" && o.transport == "kafka":
		return nil, errors.New("-name is required with the kafka transport")
	case o.workdir == "":
		return nil, errors.New("-workdir is required")
	case o.transport == "kafka" && o.brokers == "":
		return nil, errors.New("-brokers is required with the kafka transport")
	case o.transport == "kafka" && o.secret == "" && o.secretFile == "":
		return nil, errors.New("-secret-file (or -secret) is required with the kafka transport")
	case o.secret != "" && o.secretFile != "":
		return nil, errors.New("give -secret or -secret-file, not both")
	case o.heartbeat <= 0 || o.heartbeatTimeout <= o.heartbeat:
		return nil, errors.New("-heartbeat must be positive and below -heartbeat-timeout")
	case o.saslPassword != "" && o.saslPassFile != "":
		return nil, errors.New("give -sasl-password or -sasl-password-file, not both")
	case o.saslMechanism == "" && (o.saslUser != "" || o.saslPassword != "" || o.saslPassFile != ""):
		return nil, errors.New("-sasl-user and -sasl-password(-file) need -sasl-mechanism")
	case o.tlsCert != "" && o.tlsKey == "", o.tlsKey != "" && o.tlsCert == "":
		return nil, errors.New("give -tls-cert and -tls-key together")
	case o.drainTimeout <= 0:
		return nil, errors.New("-drain-timeout must be positive")
	case hclog.LevelFromString(o.logLevel) == hclog.NoLevel:
		return nil, fmt.Errorf("-log-level %q: want trace, debug, info, warn or error", o.logLevel)
	}
	return o, nil
}

// readSecret decodes the node's secret from -secret or -secret-file.
func (o *options) readSecret() ([]byte, error) {
	s, what := o.secret, "-secret"
	if o.secretFile != "" {
		b, err := os.ReadFile(o.secretFile)
		if err != nil {
			return nil, fmt.Errorf("read secret: %w", err)
		}
		s, what = string(b), o.secretFile
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	secret, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%s: the secret must be hex, as `conveyor secret` prints it: %v", what, err)
	}
	return secret, nil
}

// kafkaConfig is the Kafka transport's configuration from the flags.
func (o *options) kafkaConfig() (kafkatransport.Config, error) {
	cfg := kafkatransport.Config{TopicPrefix: o.topicPrefix, ClientID: "conveyor-agent-" + o.name}
	for _, b := range strings.Split(o.brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			cfg.Brokers = append(cfg.Brokers, b)
		}
	}
	if o.tls || o.tlsCA != "" || o.tlsCert != "" || o.tlsKey != "" || o.tlsInsecure {
		cfg.TLS = &kafkatransport.TLS{CAFile: o.tlsCA, CertFile: o.tlsCert, KeyFile: o.tlsKey, InsecureSkipVerify: o.tlsInsecure}
	}
	if o.saslMechanism != "" {
		pw := o.saslPassword
		if o.saslPassFile != "" {
			b, err := os.ReadFile(o.saslPassFile)
			if err != nil {
				return cfg, fmt.Errorf("read SASL password: %w", err)
			}
			pw = strings.TrimRight(string(b), "\r\n")
		}
		cfg.SASL = &kafkatransport.SASL{Mechanism: o.saslMechanism, Username: o.saslUser, Password: pw}
	}
	if _, err := cfg.Sarama(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	o, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "conveyor-agent: %v\n", err)
		return 2
	}
	if o.showVersion {
		fmt.Fprintf(stdout, "conveyor-agent %s\n", version)
		return 0
	}
	secret, err := o.readSecret()
	if err != nil {
		fmt.Fprintf(stderr, "conveyor-agent: %v\n", err)
		return 2
	}
	var kcfg kafkatransport.Config
	if o.transport == "kafka" {
		if kcfg, err = o.kafkaConfig(); err != nil {
			fmt.Fprintf(stderr, "conveyor-agent: %v\n", err)
			return 2
		}
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "conveyor-agent", Level: hclog.LevelFromString(o.logLevel), Output: stderr})
	if err := os.MkdirAll(o.workdir, 0o755); err != nil {
		log.Error("cannot create the workdir", "error", err)
		return 1
	}
	agent := session.New(session.Config{
		Node: o.name, Secret: secret, Version: version, Workdir: o.workdir,
		Env:       stepEnv(os.Environ()),
		Heartbeat: o.heartbeat, HeartbeatTimeout: o.heartbeatTimeout, DrainTimeout: o.drainTimeout,
		SessionTimeout: o.sessionTimeout, OutboxBytes: o.bufferMiB << 20,
		Logger: log.Named("session"),
	})

	// A master that closed its end of stdout must fail the write (EPIPE),
	// so that the agent stops its steps, rather than kill the agent with
	// SIGPIPE and leave them running. (Notify, unlike Ignore, is not
	// inherited by the steps.)
	sigpipe := make(chan os.Signal, 1)
	signal.Notify(sigpipe, syscall.SIGPIPE)
	defer signal.Stop(sigpipe)

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	go func() {
		sig, ok := <-sigs
		if !ok {
			return
		}
		log.Info("draining", "signal", sig.String(), "running_steps", agent.Running(), "drain_timeout", o.drainTimeout)
		agent.Drain()
		if _, ok := <-sigs; ok {
			log.Warn("second signal: stopping at once")
			stop()
		}
	}()

	if o.transport == "stdio" {
		// Stdout carries frames only: logs go to stderr, steps' output to
		// their own pipes.
		log.Info("starting", "node", o.name, "transport", "stdio", "version", version)
		conn := launcher.NewStreamConn(bufio.NewReaderSize(stdin, 64<<10), stdout, nil, "stdio")
		return exitCode(log, agent, agent.Serve(ctx, conn))
	}

	log.Info("starting", "node", o.name, "transport", "kafka", "brokers", kcfg.Brokers, "version", version)
	retry := backoff.New(backoffMin, backoffMax)
	for attempt := 1; ; attempt++ {
		log.Info("connecting", "attempt", attempt, "brokers", kcfg.Brokers)
		conn, err := kafkatransport.DialAgent(ctx, kcfg, o.name, log.Named("kafka"))
		if err == nil {
			log.Info("connected", "via", conn.Description())
			start := time.Now()
			err = agent.Serve(ctx, conn)
			_ = conn.Close()
			if errors.Is(err, session.ErrDrained) || ctx.Err() != nil {
				return exitCode(log, agent, err)
			}
			if time.Since(start) > backoffMax {
				retry.Reset() // it worked for a while
			}
		} else if ctx.Err() != nil {
			return exitCode(log, agent, ctx.Err())
		}
		// Sleep the backoff, unless the agent drains meanwhile: it leaves at
		// once if no step runs; steps of the held session are reported
		// after the resume first.
		wait := retry.Next()
		log.Warn("disconnected; reconnecting", "error", err, "in", wait.Round(time.Millisecond), "running_steps", agent.Running())
		t := time.NewTimer(wait)
		drain := agent.DrainRequested()
		if agent.Running() > 0 {
			drain = nil
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return exitCode(log, agent, ctx.Err())
		case <-drain:
			t.Stop()
			return exitCode(log, agent, session.ErrDrained)
		}
	}
}

// stepEnv is the environment steps start from: the agent's own, without
// its configuration (CONVEYOR_AGENT_SECRET, say, must not leak to builds).
func stepEnv(environ []string) []string {
	env := make([]string, 0, len(environ))
	for _, kv := range environ {
		if !strings.HasPrefix(kv, envPrefix) {
			env = append(env, kv)
		}
	}
	return env
}

// exitCode logs how the agent ended and maps it to an exit status.
func exitCode(log hclog.Logger, agent *session.Agent, err error) int {
	agent.End(fmt.Errorf("the agent is exiting: %v", err)) // no step outlives the agent
	c := agent.Counters()
	log = log.With("stale_frames", c.Stale, "malformed_frames", c.Malformed, "unexpected_frames", c.Unexpected,
		"replayed_frames", c.Replayed, "forged_frames", c.Forged, "duplicate_frames", c.Duplicate,
		"hints", c.Hints, "transport_malformed", c.Transport)
	switch {
	case errors.Is(err, session.ErrDrained):
		log.Info("drained; exiting")
		return 0
	case errors.Is(err, session.ErrDisconnected), errors.Is(err, context.Canceled):
		log.Info("exiting", "reason", err)
		return 0
	default:
		log.Error("exiting", "error", err)
		return 1
	}
}
