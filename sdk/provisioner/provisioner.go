// Package provisioner is what a Conveyor provisioner plugin implements and
// what the host uses to talk to one. A provisioner creates and deletes the
// machines that run pooled agents (Docker containers, Kubernetes pods,
// cloud VMs); the agents themselves then connect to the master through a
// launcher (Kafka by default), like any other node. A plugin's main calls
// Serve with a factory for its Provisioner; the host loads it with Start.
// Neither side sees gRPC.
//
// The host owns the desired state (how many instances each pool should
// have) and reconciles it with what List reports; a provisioner only does
// what it is told, and remembers nothing the backend does not: every
// instance carries the tags the host gave it (the pool, the master's
// identity, the request and the instance's name), so that a restarted
// master, or a restarted plugin, finds every instance by listing them.
// Create is idempotent by request id and Delete by instance id, so the
// host may repeat either after a crash without creating or leaking
// anything. docs/provisioners.md says how the host uses a provisioner and
// how to write one.
package provisioner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/zclconf/go-cty/cty"

	"github.com/conveyor-ci/conveyor/sdk/hclspec"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// Tags every instance carries. The host sets TagMaster (and any tags of
// its own) in CreateRequest.Tags; the SDK adds TagPool, TagRequest and
// TagInstance to each InstanceSpec.Tags before the plugin's Create runs.
// A provisioner stores InstanceSpec.Tags with the instance (Docker labels,
// Kubernetes labels, cloud tags) and returns them in Instance.Tags.
const (
	// TagPool is the pool the instance belongs to.
	TagPool = "conveyor.pool"
	// TagMaster is the identity of the master that created the instance
	// (Host.MasterID): a master lists and adopts only its own instances.
	TagMaster = "conveyor.master"
	// TagRequest is the id of the Create request that created it.
	TagRequest = "conveyor.request"
	// TagInstance is the instance's name (its node's name).
	TagInstance = "conveyor.instance"
)

// Instance states, as List and Create report them.
const (
	// StatePending: created, not running yet (image pulled, VM booting).
	StatePending = "pending"
	// StateRunning: the instance runs; its agent may or may not be
	// connected yet (the host knows that from the launcher).
	StateRunning = "running"
	// StateStopped: the instance exists but its agent is no longer running
	// (the container exited, the VM was stopped). The host deletes it.
	StateStopped = "stopped"
	// StateFailed: the backend gave up on it (Instance.Reason says why).
	StateFailed = "failed"
	// StateDeleting: deletion was asked for and is under way.
	StateDeleting = "deleting"
	// StateUnknown: the backend reports a state the plugin cannot map.
	StateUnknown = "unknown"
)

// Info describes a plugin: the same as a launcher's.
type Info = launcher.Info

// Provisioner creates, lists and deletes the instances of pools.
//
// Every call may be repeated: the host retries after a timeout, a crash of
// the master or a crash of the plugin. Create with a request id already
// served returns the instances it created then and creates nothing;
// Delete of an instance that is gone is no error. A call bounds its own
// work and returns when ctx ends.
type Provisioner interface {
	// Info reports the plugin's name, version and capabilities.
	Info(ctx context.Context) (*Info, error)
	// Schema declares the HCL schema of the global `provisioner "NAME" {}`
	// block and of the per-pool block.
	Schema(ctx context.Context) (*Schema, error)
	// Configure receives the decoded global block and every pool's block.
	// Invalid values are reported as ConfigErrors so the host can point at
	// the offending line; any other error fails the plugin's start.
	// Configure connects to nothing when Host.ValidateOnly is set.
	Configure(ctx context.Context, cfg *Config) error
	// Create creates one instance per req.Instances, in pool req.Pool,
	// each booting its agent with its Bootstrap and carrying its Tags. It
	// returns the instances in the order of req.Instances. When some could
	// not be created it returns those that were, and the error; an error
	// that repeating the request cannot fix until the configuration
	// changes (the image does not exist, credentials are refused) is marked
	// with Permanent, so that the host stops asking and shows the reason.
	//
	// Create is idempotent: an instance of the same request id and
	// instance name that exists already is returned as it is, not created
	// again.
	Create(ctx context.Context, req *CreateRequest) ([]*Instance, error)
	// List returns the instances this provisioner created that carry
	// every one of tags (all of them when tags is empty), whatever their
	// state, with their tags. It reads the backend, never a cache that a
	// restart would lose.
	List(ctx context.Context, tags map[string]string) ([]*Instance, error)
	// Delete deletes the instances of the given ids, stopping their
	// agents. An id that is unknown or already gone is no error.
	Delete(ctx context.Context, ids []string) error
	// Health reports whether the backend answers (the Docker engine
	// pings, the cloud API authenticates): nil when it does.
	Health(ctx context.Context) error
}

// Schema is a provisioner's configuration schema. A nil spec means the
// block takes no configuration.
type Schema struct {
	// Global is the `provisioner "NAME" {}` block: where the backend is.
	Global *hclspec.Spec
	// Pool is the per-pool block: what an instance of the pool is.
	Pool *hclspec.Spec
}

// Host describes the server a plugin runs under.
type Host struct {
	// ServerName is the server's configured name.
	ServerName string
	// DataDir is a directory reserved for this plugin's state.
	DataDir string
	// Version is the server's version.
	Version string
	// ValidateOnly asks Configure to check the values and connect to
	// nothing: the host is only validating a configuration.
	ValidateOnly bool
	// MasterID is the master's stable identity, the value of TagMaster
	// on its instances.
	MasterID string
}

// Config is the configuration handed to Configure.
type Config struct {
	Host   Host
	Global cty.Value
	Pools  []*Pool
}

// DecodeGlobal decodes the global block into target (see launcher.Decode).
func (c *Config) DecodeGlobal(target any) error {
	return launcher.Decode(c.Global, target)
}

// Pool is one pool's configuration.
type Pool struct {
	Name   string
	Config cty.Value
}

// Decode decodes the pool's provisioner block into target (see
// launcher.Decode).
func (p *Pool) Decode(target any) error {
	return launcher.Decode(p.Config, target)
}

// CreateRequest asks for instances.
type CreateRequest struct {
	// RequestID makes the request idempotent: the host makes one up per
	// scale-up decision, stores it before calling Create, and repeats it
	// after a crash.
	RequestID string
	// Pool is the pool the instances belong to (one of Config.Pools).
	Pool string
	// Tags go on every instance (TagMaster at least).
	Tags map[string]string
	// Instances are the instances to create, at least one.
	Instances []*InstanceSpec
}

// InstanceSpec is one instance to create.
type InstanceSpec struct {
	// Name is the instance's name, unique among the master's instances:
	// the name of the node its agent connects as.
	Name string
	// Bootstrap is how the instance starts its agent.
	Bootstrap Bootstrap
	// Tags are the tags the instance must carry: the request's Tags plus
	// TagPool, TagRequest and TagInstance. The SDK fills them in.
	Tags map[string]string
}

// Bootstrap is what an instance needs to start its agent.
type Bootstrap struct {
	// Command is the agent's command line: the program ("conveyor-agent")
	// and its arguments.
	Command []string
	// Env is added to the agent's environment.
	Env map[string]string
	// Secret is the node's secret, the raw bytes.
	Secret []byte
	// SecretFile, an absolute path, is where Command expects the secret
	// (its -secret-file): the provisioner writes Secret there, in hex as
	// `conveyor secret` prints it, before the agent starts, readable by
	// the agent only. Empty: the provisioner hands the secret to the agent
	// in its environment, as CONVEYOR_AGENT_SECRET (hex).
	SecretFile string
	// Labels are the node's labels (a provisioner may use them to pick a
	// machine type; most ignore them).
	Labels []string
}

// SecretEnv is the environment variable that carries the secret when
// Bootstrap.SecretFile is empty (the agent's -secret flag).
const SecretEnv = "CONVEYOR_AGENT_SECRET"

// Instance is one instance as the backend reports it.
type Instance struct {
	// ID is the backend's id of the instance (a container id, a pod's
	// name, a VM id): what Delete takes.
	ID string
	// Name is the instance's name (InstanceSpec.Name).
	Name string
	// Pool is the instance's pool.
	Pool string
	// State is one of the State constants.
	State string
	// Reason says why the instance is in its state, when the backend says
	// ("exited with code 1", "image not found").
	Reason string
	// Tags are the tags the instance carries.
	Tags map[string]string
	// Created is when the backend created it (zero: unknown).
	Created time.Time
}

// Permanent marks err, returned by Create, as a failure that repeating the
// request cannot fix until the configuration changes: the same mechanism
// as launcher.Permanent, and IsPermanent holds for it on the host side.
func Permanent(err error) error { return launcher.Permanent(err) }

// IsPermanent reports whether err, or an error it wraps, was marked with
// Permanent.
func IsPermanent(err error) bool { return launcher.IsPermanent(err) }

// ConfigError points at one bad configuration value.
type ConfigError struct {
	// Pool is empty for the global block.
	Pool string
	// Path names the attribute, after any enclosing blocks: ["resources", "memory"].
	Path []string
	// Message says what is wrong.
	Message string
	// Warning: the value is accepted, but likely a mistake.
	Warning bool
}

// Error implements error.
func (e ConfigError) Error() string {
	where := "provisioner block"
	if e.Pool != "" {
		where = fmt.Sprintf("pool %q", e.Pool)
	}
	if e.Warning {
		where = "warning: " + where
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

// Error implements error.
func (es ConfigErrors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "; ")
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

// Validate checks a CreateRequest and fills in each InstanceSpec's Tags.
// The SDK calls it on both sides of the plugin boundary; a plugin author
// does not need to.
func (r *CreateRequest) Validate() error {
	switch {
	case r.RequestID == "":
		return errors.New("create: empty request id")
	case r.Pool == "":
		return errors.New("create: empty pool")
	case len(r.Instances) == 0:
		return fmt.Errorf("create %s: no instances", r.RequestID)
	}
	for k, v := range r.Tags {
		if k == "" || v == "" {
			return fmt.Errorf("create %s: empty tag %q=%q", r.RequestID, k, v)
		}
	}
	seen := map[string]bool{}
	for _, in := range r.Instances {
		switch {
		case in == nil || in.Name == "":
			return fmt.Errorf("create %s: an instance has no name", r.RequestID)
		case seen[in.Name]:
			return fmt.Errorf("create %s: instance %q twice", r.RequestID, in.Name)
		case len(in.Bootstrap.Command) == 0:
			return fmt.Errorf("create %s: instance %q has no agent command", r.RequestID, in.Name)
		case in.Bootstrap.SecretFile != "" && !strings.HasPrefix(in.Bootstrap.SecretFile, "/"):
			return fmt.Errorf("create %s: instance %q: secret file %q is not an absolute path", r.RequestID, in.Name, in.Bootstrap.SecretFile)
		}
		seen[in.Name] = true
		tags := make(map[string]string, len(r.Tags)+3)
		for k, v := range r.Tags {
			tags[k] = v
		}
		tags[TagPool] = r.Pool
		tags[TagRequest] = r.RequestID
		tags[TagInstance] = in.Name
		in.Tags = tags
	}
	return nil
}

// HasTags reports whether the instance carries every one of tags.
func (i *Instance) HasTags(tags map[string]string) bool {
	for k, v := range tags {
		if i.Tags[k] != v {
			return false
		}
	}
	return true
}
