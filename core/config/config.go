package config

import (
	"path/filepath"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// Defaults applied to the server block (or to the whole block when absent).
const (
	DefaultServerName = "conveyor"
	DefaultHTTPAddr   = "127.0.0.1:8080"
	DefaultDataDir    = "data"
	DefaultLogLevel   = "info"
	DefaultExecutors  = 1
)

// LogLevels lists the accepted values of server.log_level, most verbose first.
var LogLevels = []string{"trace", "debug", "info", "warn", "error"}

// Config is a loaded configuration.
type Config struct {
	// Server holds the server settings, with defaults applied.
	Server Server
	// Launchers are the launcher blocks, in declaration order.
	Launchers []*Launcher
	// Nodes are the node blocks, in declaration order.
	Nodes []*Node
	// Jobs are the job blocks, in declaration order.
	Jobs []*Job
	// Files holds every parsed file by name, for printing diagnostics.
	Files map[string]*hcl.File

	// dir is the directory of the first configuration path (the directory
	// itself when a directory was given).
	dir string
	// order lists the loaded files in load order, to sort diagnostics.
	order []string
	// ctxs caches one evaluation context per configuration directory.
	ctxs map[string]*hcl.EvalContext
	// state bounds and records what the functions return (see Redact).
	state *evalState
}

// Server is the server block.
type Server struct {
	// Name is the name of this master (default "conveyor").
	Name string
	// HTTPAddr is the listen address of the HTTP API (default "127.0.0.1:8080").
	HTTPAddr string
	// DataDir is the absolute directory holding the master's state; a
	// relative value is resolved against the configuration file's directory.
	DataDir string
	// PluginDir is the absolute directory holding plugin binaries, or "" to
	// let the host search next to its executable and then PATH.
	PluginDir string
	// LogLevel is one of LogLevels (default "info").
	LogLevel string
	// LogJSON selects JSON log output.
	LogJSON bool
	// API holds the HTTP API's access settings (the api block).
	API API
	// DefRange is the range of the block header, or the zero range when the
	// configuration has no server block.
	DefRange hcl.Range
}

// MinAPITokenLength is the shortest API token the configuration accepts.
const MinAPITokenLength = 16

// API is the api block of the server block: who may use the HTTP API.
type API struct {
	// Token is the bearer token every API request but GET /healthz must
	// carry. Empty means the server uses the token in data_dir/api-token,
	// generating it at first start.
	Token string
	// PublicRead lets requests without the token use the read-only
	// endpoints (nodes, jobs, builds, logs, plugins). Triggering,
	// cancelling, deleting nodes and reading node secrets always need it.
	PublicRead bool
}

// Launcher is a launcher block: a plugin named conveyor-launcher-NAME.
type Launcher struct {
	// Name is the block label and the plugin's name.
	Name string
	// SHA256 is the optional lowercase hex pin of the plugin binary.
	SHA256 string
	// Body is the rest of the block, owned by the plugin.
	Body hcl.Body
	// MaxConcurrentLaunches bounds how many of the launcher's nodes are
	// launched at once (max_concurrent_launches, default
	// DefaultMaxConcurrentLaunches); the others wait for a slot.
	MaxConcurrentLaunches int
	// DefRange is the range of the block header.
	DefRange hcl.Range
	// Config is Body decoded by DecodePlugins; cty.NilVal before that, or
	// when the plugin gave no spec.
	Config cty.Value
}

// Availability modes of a node.
const (
	// AvailabilityAlways keeps the node online (the default).
	AvailabilityAlways = "always"
	// AvailabilityOnDemand launches the node when builds wait for its
	// labels and takes it offline after IdleTimeout without builds.
	AvailabilityOnDemand = "on_demand"
)

// Availability is a node's availability block.
type Availability struct {
	// Mode is AvailabilityAlways or AvailabilityOnDemand.
	Mode string
	// IdleTimeout is how long an on-demand node stays online without
	// builds before it is taken offline (default DefaultIdleTimeout).
	IdleTimeout time.Duration
}

// Node is a node block: a place where jobs run, through one launcher.
type Node struct {
	// Name is the block label; it is also an implicit label of the node.
	Name string
	// Launcher names the launcher block this node runs through.
	Launcher string
	// Labels are the node's explicit labels.
	Labels []string
	// Executors is the number of jobs the node runs at once (default 1).
	Executors int
	// HeartbeatTimeout is how long the agent may stay silent before its
	// link counts as lost (0: the server's default, 30s).
	HeartbeatTimeout time.Duration
	// SessionTimeout is how long a resumable session (launchers with the
	// resume capability, such as Kafka) waits for the agent to come back
	// before its running builds fail with "agent lost" (0: the default,
	// 5m).
	SessionTimeout time.Duration
	// WriteTimeout is how long the master retries storing what the node's
	// agent sent when the file system refuses it (the disk is full)
	// before the steps whose writes fail end with the error (0: the
	// default, 60s or the session timeout when shorter). It is at most
	// the session timeout.
	WriteTimeout time.Duration
	// Shell is the command line the node's steps run under, the step's
	// script appended as its last argument (shell = ["bash", "-l", "-c"]);
	// nil means the agent's default, DefaultShell. A job's shell wins.
	Shell []string
	// Availability says when the node is kept online.
	Availability Availability
	// Body is the body of the node's block named after its launcher; when
	// the node has no such block it is an empty body that reports missing
	// items at DefRange.
	Body hcl.Body
	// BlockRange is the header range of the launcher's block inside the
	// node, or DefRange when the node has none.
	BlockRange hcl.Range
	// DefRange is the range of the block header.
	DefRange hcl.Range
	// Config is Body decoded by DecodePlugins; cty.NilVal before that, or
	// when the plugin gave no spec.
	Config cty.Value
}

// Job is a job block.
type Job struct {
	// Name is the block label.
	Name string
	// Labels must all be carried by a node for it to run the job.
	Labels []string
	// Timeout bounds a run of the job; zero means no timeout.
	Timeout time.Duration
	// Env holds extra environment variables for the steps; nil when unset.
	Env map[string]string
	// Shell is the command line the job's steps run under (see
	// Node.Shell); nil leaves it to the node.
	Shell []string
	// Params are the build parameters a trigger may set (param blocks),
	// in declaration order; a trigger may set no other.
	Params []Param
	// Steps are run in order; there is at least one.
	Steps []Step
	// Artifacts are glob patterns, relative to the build's workspace, of
	// the files the master archives once the steps ended (see
	// CheckArtifactPattern); nil when unset.
	Artifacts []string
	// ArtifactsMaxBytes bounds what one build's artifacts may take on the
	// master (artifacts_max_mib, default DefaultArtifactsMaxMiB): a
	// transfer going beyond fails the build, the disk does not fill up.
	ArtifactsMaxBytes int64
	// DefRange is the range of the block header.
	DefRange hcl.Range
}

// DefaultArtifactsMaxMiB is a job's artifacts_max_mib when unset.
const DefaultArtifactsMaxMiB = 4096

// Defaults of a node's timeouts (the node's session applies them).
const (
	// DefaultSessionTimeout is a node's session_timeout when not set.
	DefaultSessionTimeout = 5 * time.Minute
	// DefaultWriteTimeout is a node's write_timeout when not set, or its
	// session_timeout when shorter.
	DefaultWriteTimeout = 60 * time.Second
)

// Upper bounds of counts in the configuration.
const (
	// MaxArtifactsMaxMiB bounds artifacts_max_mib (16 TiB).
	MaxArtifactsMaxMiB = 1 << 24
	// DefaultMaxConcurrentLaunches is a launcher's max_concurrent_launches
	// when not set.
	DefaultMaxConcurrentLaunches = 10
	// MaxMaxConcurrentLaunches bounds max_concurrent_launches.
	MaxMaxConcurrentLaunches = 10000
	// DefaultIdleTimeout is an on-demand node's idle_timeout when not set.
	DefaultIdleTimeout = 10 * time.Minute
	// MaxExecutors bounds a node's executors.
	MaxExecutors = 1024
)

// Step is one step of a job.
type Step struct {
	// Name is the block label, unique within the job.
	Name string
	// Run is the shell command line of the step.
	Run string
	// Stdin, when set, is the step's standard input (at most MaxStdin
	// bytes); nil gives the step /dev/null.
	Stdin *string
	// DefRange is the range of the block header.
	DefRange hcl.Range
}

// Launcher returns the launcher named name, or nil.
func (c *Config) Launcher(name string) *Launcher {
	for _, l := range c.Launchers {
		if l.Name == name {
			return l
		}
	}
	return nil
}

// Node returns the node named name, or nil.
func (c *Config) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Job returns the job named name, or nil.
func (c *Config) Job(name string) *Job {
	for _, j := range c.Jobs {
		if j.Name == name {
			return j
		}
	}
	return nil
}

// EvalContext returns the evaluation context (the functions env, file,
// upper, lower, trimspace and join) used for the configuration; file()
// resolves relative paths against the directory of the first loaded path.
// What file() and env() return, and every value computed from it, carries
// a cty mark naming the call: unmark a value (cty.Value.UnmarkDeep) before
// decoding it, and never quote it in a message.
func (c *Config) EvalContext() *hcl.EvalContext {
	return c.evalContextFor(c.dir)
}

// evalContextFor returns the cached evaluation context for files in dir.
func (c *Config) evalContextFor(dir string) *hcl.EvalContext {
	if c.ctxs == nil {
		c.ctxs = map[string]*hcl.EvalContext{}
	}
	ctx, ok := c.ctxs[dir]
	if !ok {
		if c.state == nil {
			c.state = &evalState{}
		}
		ctx = newEvalContext(dir, c.state)
		c.ctxs[dir] = ctx
	}
	return ctx
}

// fileEvalContext returns the evaluation context for expressions in the named
// configuration file.
func (c *Config) fileEvalContext(filename string) *hcl.EvalContext {
	if filename == "" {
		return c.EvalContext()
	}
	return c.evalContextFor(filepath.Dir(filename))
}
