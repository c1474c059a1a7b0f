// Package launcher is what a Conveyor launcher plugin implements and what
// the host uses to talk to one. A plugin's main calls Serve with a factory
// for its Launcher; the host loads the plugin with NewClient and Dispense.
// Neither side sees gRPC.
//
// A failed Launch is retried by the host with backoff, unless the launcher
// marks the error with Permanent (refused credentials, a refused host key):
// the host then shows it as the node's reason and asks again only every
// PermanentRetry, and the launcher answers from memory, without contacting
// the machine, until what it depends on changes. The host sets no deadline
// on Launch: a launcher bounds its own launch (the SSH launcher:
// launch_timeout per attempt, max_retries, retry_wait) and ctx ends only
// when the host stops or gives the node up.
package launcher

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/conveyor-ci/conveyor/sdk/hclspec"
	"github.com/zclconf/go-cty/cty"
)

// Capabilities a launcher may report in Info.
const (
	// CapSecrets: the plugin implements SecretManager.
	CapSecrets = "secrets"
	// CapPurge: the plugin implements Purger.
	CapPurge = "purge"
	// CapCommands: the plugin implements Commander.
	CapCommands = "commands"
	// CapResume: the agent outlives a connection (it talks to a durable
	// log, not over the connection's own socket), so the master keeps a
	// node's session when the connection breaks and resumes it on the next
	// one, for up to the node's session_timeout. Without it a broken
	// connection ends the session and fails its running steps, as a
	// broken TCP link does.
	CapResume = "resume"
	// CapStats: the plugin implements LinkStater.
	CapStats = "stats"
)

// Launcher connects build agents to the master: it launches (or accepts)
// the agent of one node and carries opaque wire frames between the two.
type Launcher interface {
	// Info reports the plugin's name, version and capabilities.
	Info(ctx context.Context) (*Info, error)
	// Schema declares the HCL schema of the global `launcher "NAME" {}`
	// block and of the per-node block. The host decodes the user's HCL
	// against it and hands Configure and Launch typed values.
	Schema(ctx context.Context) (*Schema, error)
	// Configure receives the decoded global block and every node's block.
	// Invalid values are reported as ConfigErrors so the host can point at
	// the offending line; any other error fails the plugin's start.
	// ConfigErrors holding warnings only (ConfigError.Warning) report a
	// successful configuration with values that are likely mistakes.
	Configure(ctx context.Context, cfg *Config) error
	// Launch starts (or waits for) the agent of one node and returns the
	// connection to it. ctx is cancelled when the host abandons the
	// launch; the connection itself lives until Close or Teardown.
	//
	// The host sets no deadline of its own on a launch: a launcher bounds
	// its own (the SSH launcher: launch_timeout, max_retries, retry_wait),
	// returns an error that says why it gave up, stops what it started
	// remotely, and returns as soon as ctx ends. A launch that does not
	// return is cut only by the host's backstop (core/nodes.LaunchBackstop,
	// 30 minutes), with a reason that blames the launcher.
	Launch(ctx context.Context, node *Node) (Conn, error)
	// Teardown ends the node's connection and stops whatever the launcher
	// started for it. Tearing down a node that is not running is no error.
	Teardown(ctx context.Context, node string) error
}

// SecretManager is an optional capability: a launcher that implements it
// supplies the secret each node's agent authenticates with.
type SecretManager interface {
	// NodeSecret returns the node's secret and the command line that
	// starts its agent.
	NodeSecret(ctx context.Context, node string) (*NodeSecret, error)
}

// Purger is an optional capability: a launcher that keeps state per node
// beyond its connection (Kafka topics, say) deletes it on request, once the
// node was removed from the configuration. Purging a node that has nothing
// left is no error.
type Purger interface {
	Purge(ctx context.Context, node string) error
}

// Commander is an optional capability: operator commands the plugin adds
// to the conveyor CLI, run as `conveyor LAUNCHER COMMAND [ARGS...]` (the
// Kafka launcher's `conveyor kafka acls`, say). The CLI loads the
// configuration, starts the plugin and configures it in validate-only
// mode (Host.ValidateOnly), then runs the command once; the plugin has
// started nothing, so a command does its work itself and returns. It
// writes nothing to stdout (the plugin's stdout is not the operator's):
// everything for the operator goes into the returned text.
type Commander interface {
	// Commands lists the plugin's commands, shown by `conveyor LAUNCHER`.
	Commands(ctx context.Context) ([]Command, error)
	// RunCommand runs one command. It returns the text to show the
	// operator; on failure the error, and whatever text the command
	// produced before it failed. An unknown name or bad arguments are
	// errors whose message says how to call the command.
	RunCommand(ctx context.Context, req *CommandRequest) (string, error)
}

// LinkStater is an optional capability: a launcher reports what it knows
// of each node's link, for the transport page of the UI. The host counts
// frames, bytes, heartbeats and round trips itself; the plugin adds what
// only it sees.
type LinkStater interface {
	// LinkStats describes the node's link. A node without a connection is
	// no error: its stats say Connected false.
	LinkStats(ctx context.Context, node string) (*LinkStats, error)
}

// LinkStats is what a launcher knows of one node's link.
type LinkStats struct {
	// Connected: the launcher holds a connection for the node.
	Connected bool
	// Endpoint says where the link goes ("ssh build@10.0.0.7:22",
	// "kafka 10.0.0.5:9092").
	Endpoint string
	// Since is when the current connection was made (zero: none).
	Since time.Time
	// Topics are the topics the node's frames travel on (Kafka).
	Topics []TopicStats
	// Reconnects counts the connections the launcher made for the node
	// after its first.
	Reconnects int64
	// Malformed counts what the launcher's transport dropped for the node
	// before any frame was decoded (a Kafka record or a partial frame that
	// did not reassemble), over all its connections.
	Malformed uint64
}

// Directions of a topic.
const (
	ToAgent  = "to_agent"
	ToMaster = "to_master"
)

// TopicStats is one topic a node's frames travel on.
type TopicStats struct {
	Name string
	// Direction is ToAgent or ToMaster.
	Direction string
	// Group is the consumer group that reads the topic.
	Group string
	// Lag is how many records the group has not consumed yet; -1 when
	// unknown.
	Lag int64
}

// Command describes one operator command.
type Command struct {
	// Name is the word after the launcher's name on the command line.
	Name string
	// Help says in one line what the command does.
	Help string
}

// CommandRequest is one run of an operator command.
type CommandRequest struct {
	// Name is the command, one of those Commands lists.
	Name string
	// Args are the arguments after the command's name; the host's own
	// -config flag is not among them.
	Args []string
	// Nodes are this launcher's configured nodes, decoded as for Configure.
	Nodes []*Node
}

// Conn is a bidirectional stream of opaque frames between the master and
// one agent. Send and Recv may be called concurrently with each other, but
// each only from one goroutine at a time.
type Conn interface {
	// Send delivers one frame to the agent. The frame is the Conn's from
	// then on: the caller does not change it. Between host and plugin,
	// Send queues the frame for the gRPC stream and returns.
	Send(frame []byte) error
	// Recv returns the next frame from the agent, or io.EOF once the agent
	// side has ended the connection. The frame is the caller's: a later
	// Recv does not reuse it. In a plugin, Recv is called again while the
	// frames before are still on their way to the host (up to half a MiB
	// of them), so that several travel in one gRPC message.
	Recv() ([]byte, error)
	// Close ends the connection; Recv then fails. It is safe to call twice.
	Close() error
}

// Describer is an optional interface of a Conn: a short description of
// where the agent runs ("pid 4242", "build@10.0.0.7:22"), shown to users.
type Describer interface {
	Description() string
}

// Info describes a plugin.
type Info struct {
	Name         string
	Version      string
	Description  string
	Capabilities []string
}

// Has reports whether the plugin declared the capability.
func (i *Info) Has(capability string) bool {
	for _, c := range i.Capabilities {
		if c == capability {
			return true
		}
	}
	return false
}

// Schema is a launcher's configuration schema. A nil spec means the block
// takes no configuration.
type Schema struct {
	Global *hclspec.Spec
	Node   *hclspec.Spec
}

// Host describes the server a plugin runs under.
type Host struct {
	// ServerName is the server's configured name.
	ServerName string
	// DataDir is a directory reserved for this plugin's state.
	DataDir string
	// Version is the server's version.
	Version string
	// ValidateOnly asks Configure to check the values and start nothing:
	// the host is only validating a configuration.
	ValidateOnly bool
}

// Config is the configuration handed to Configure.
type Config struct {
	Host   Host
	Global cty.Value
	Nodes  []*Node
}

// DecodeGlobal decodes the global block into target (see Decode).
func (c *Config) DecodeGlobal(target any) error {
	return Decode(c.Global, target)
}

// Node is one node's configuration.
type Node struct {
	Name   string
	Labels []string
	Config cty.Value
	// ApprovedKeys, set on Launch, are the host key fingerprints
	// ("SHA256:...", as ssh-keygen -l shows them) an operator approved
	// for the node: a launcher whose host key verification waits for an
	// approval (ApprovalPending) accepts a first key among them.
	ApprovedKeys []string
}

// Decode decodes the node's launcher block into target (see Decode).
func (n *Node) Decode(target any) error {
	return Decode(n.Config, target)
}

// NodeSecret is what SecretManager returns.
type NodeSecret struct {
	Secret []byte
	// AgentCommand is the exact command line that starts the node's agent.
	AgentCommand []string
}

// ConfigError points at one bad configuration value.
type ConfigError struct {
	// Node is empty for the global block.
	Node string
	// Path names the attribute, after any enclosing blocks: ["tls", "ca_file"].
	Path []string
	// Message says what is wrong.
	Message string
	// Warning: the value is accepted, but likely a mistake. Configure
	// returns ConfigErrors holding warnings only once it has done all it
	// does on success: the host shows them and goes on.
	Warning bool
}

// Error implements error.
func (e ConfigError) Error() string {
	where := "launcher block"
	if e.Warning {
		where = "warning: " + where
	}
	if e.Node != "" {
		where = fmt.Sprintf("node %q", e.Node)
	}
	if len(e.Path) > 0 {
		where += " " + strings.Join(e.Path, ".")
	}
	return where + ": " + e.Message
}

// ConfigErrors is returned by Configure when values are invalid, or, all
// of them warnings, when the configuration succeeded with values that are
// likely mistakes.
type ConfigErrors []ConfigError

// ConfigureFailed reports whether err, returned by Configure, means that
// the configuration failed: any error but ConfigErrors holding warnings
// only.
func ConfigureFailed(err error) bool {
	var ces ConfigErrors
	if errors.As(err, &ces) {
		return ces.HasErrors()
	}
	return err != nil
}

// HasErrors reports whether any of es is an error, not a warning.
func (es ConfigErrors) HasErrors() bool {
	for _, e := range es {
		if !e.Warning {
			return true
		}
	}
	return false
}

// Error implements error.
func (es ConfigErrors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "; ")
}
