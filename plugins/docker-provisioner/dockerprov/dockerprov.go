// Package dockerprov is Conveyor's Docker provisioner: it runs each pooled
// agent as a container of a Docker engine, through the engine's API (the
// official client, github.com/moby/moby/client). Containers carry their
// instance's tags as labels, so that the engine itself is the record of
// what exists: Create finds an instance of the same request and name by
// label before creating one, List reads labels, and a restarted plugin or
// master loses nothing.
package dockerprov

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/hashicorp/go-hclog"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"

	"github.com/conveyor-ci/conveyor/sdk/provisioner"
)

// Version is the plugin's version, set by the build.
var Version = "dev"

// LabelProvisioner marks the containers this provisioner created; List
// never reports another container.
const LabelProvisioner = "conveyor.provisioner"

// provisionerName is LabelProvisioner's value and the plugin's name.
const provisionerName = "docker"

// callTimeout bounds one call to the engine.
const callTimeout = 60 * time.Second

// conflictWait bounds the wait for the container of a concurrent call of
// the same request, whose name the engine has reserved.
const conflictWait = 10 * time.Second

// Provisioner is the Docker provisioner. It implements
// provisioner.Provisioner.
type Provisioner struct {
	log hclog.Logger

	mu     sync.Mutex
	host   string
	master string
	pools  map[string]*poolConfig
	cli    *client.Client
}

// New returns an unconfigured Docker provisioner.
func New(logger hclog.Logger) *Provisioner {
	return &Provisioner{log: logger.Named("docker")}
}

// Info implements provisioner.Provisioner.
func (p *Provisioner) Info(context.Context) (*provisioner.Info, error) {
	return &provisioner.Info{Name: provisionerName, Version: Version, Description: "runs pooled agents as containers of a Docker engine"}, nil
}

// Schema implements provisioner.Provisioner.
func (p *Provisioner) Schema(context.Context) (*provisioner.Schema, error) { return schema(), nil }

// Configure implements provisioner.Provisioner. It connects to nothing:
// an engine out of reach shows in Health and in each Create.
func (p *Provisioner) Configure(_ context.Context, cfg *provisioner.Config) error {
	var g globalConfig
	if err := cfg.DecodeGlobal(&g); err != nil {
		return provisioner.ConfigErrors{{Message: err.Error()}}
	}
	es := checkGlobal(&g)
	pools := map[string]*poolConfig{}
	for _, pl := range cfg.Pools {
		var pc poolConfig
		if err := pl.Decode(&pc); err != nil {
			es = append(es, provisioner.ConfigError{Pool: pl.Name, Message: err.Error()})
			continue
		}
		if pc.NetworkMode == "" && pl.Config.IsNull() {
			pc.NetworkMode = DefaultNetworkMode
		}
		es = append(es, checkPool(pl.Name, &pc)...)
		pools[pl.Name] = &pc
	}
	if es.HasErrors() {
		return es
	}
	if cfg.Host.ValidateOnly {
		return nil
	}
	opts := []client.Opt{client.FromEnv}
	if g.Host != "" {
		opts = append(opts, client.WithHost(g.Host))
	}
	cli, err := client.New(opts...)
	if err != nil {
		return fmt.Errorf("docker client: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cli != nil {
		_ = p.cli.Close()
	}
	p.cli, p.host, p.master, p.pools = cli, cli.DaemonHost(), cfg.Host.MasterID, pools
	return nil
}

// engine returns the client and a pool's configuration.
func (p *Provisioner) engine(pool string) (*client.Client, *poolConfig, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cli == nil {
		return nil, nil, errors.New("docker provisioner is not configured")
	}
	if pool == "" {
		return p.cli, nil, nil
	}
	pc, ok := p.pools[pool]
	if !ok {
		return nil, nil, provisioner.Permanent(fmt.Errorf("pool %q has no docker block in this provisioner's configuration", pool))
	}
	return p.cli, pc, nil
}

// Health implements provisioner.Provisioner: the engine answers a ping.
func (p *Provisioner) Health(ctx context.Context) error {
	cli, _, err := p.engine("")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if _, err := cli.Ping(ctx, client.PingOptions{}); err != nil {
		return fmt.Errorf("docker engine at %s: %w", p.host, err)
	}
	return nil
}

// Create implements provisioner.Provisioner.
func (p *Provisioner) Create(ctx context.Context, req *provisioner.CreateRequest) ([]*provisioner.Instance, error) {
	cli, pc, err := p.engine(req.Pool)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	// The image first: without it nothing can start, and repeating the
	// request will not help until someone builds or loads it there.
	if _, err := cli.ImageInspect(ctx, pc.Image); err != nil {
		if cerrdefs.IsNotFound(err) {
			return nil, provisioner.Permanent(fmt.Errorf("image %q is not on the Docker engine at %s (this provisioner never pulls: build, load or pull it there)", pc.Image, p.host))
		}
		return nil, fmt.Errorf("inspect image %q on %s: %w", pc.Image, p.host, err)
	}
	out := make([]*provisioner.Instance, 0, len(req.Instances))
	for _, spec := range req.Instances {
		in, err := p.createOne(ctx, cli, pc, req.Pool, spec)
		if err != nil {
			return out, fmt.Errorf("instance %q: %w", spec.Name, err)
		}
		out = append(out, in)
	}
	return out, nil
}

// createOne creates and starts one container, or finds the one an earlier
// call of the same request created (and starts it, when that call died
// between creating and starting it).
func (p *Provisioner) createOne(ctx context.Context, cli *client.Client, pc *poolConfig, pool string, spec *provisioner.InstanceSpec) (*provisioner.Instance, error) {
	key := map[string]string{provisioner.TagRequest: spec.Tags[provisioner.TagRequest], provisioner.TagInstance: spec.Name}
	existing, err := p.list(ctx, cli, key)
	if err != nil {
		return nil, err
	}
	var id string
	switch {
	case len(existing) > 0:
		id = existing[0].ID
		if existing[0].State != provisioner.StatePending {
			p.log.Debug("instance exists already", "instance", spec.Name, "container", id)
			return existing[0], nil
		}
	default:
		id, err = p.createContainer(ctx, cli, pc, pool, spec)
		if err != nil {
			return nil, err
		}
	}
	if f := spec.Bootstrap.SecretFile; f != "" {
		if err := copySecret(ctx, cli, id, f, spec.Bootstrap.Secret); err != nil {
			return nil, err
		}
	}
	if _, err := cli.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		return nil, fmt.Errorf("start container %s: %w", shortID(id), err)
	}
	p.log.Info("instance started", "pool", pool, "instance", spec.Name, "container", shortID(id), "image", pc.Image)
	ins, err := p.list(ctx, cli, key)
	if err != nil {
		return nil, err
	}
	if len(ins) == 0 {
		return nil, fmt.Errorf("container %s vanished right after it started", shortID(id))
	}
	return ins[0], nil
}

// createContainer creates (does not start) the container of spec. Its name
// derives from the request and the instance, so that two concurrent calls
// of the same request create one container: the second one's conflict
// resolves to the first one's container.
func (p *Provisioner) createContainer(ctx context.Context, cli *client.Client, pc *poolConfig, pool string, spec *provisioner.InstanceSpec) (string, error) {
	labels := map[string]string{LabelProvisioner: provisionerName}
	for k, v := range spec.Tags {
		labels[k] = v
	}
	env := map[string]string{}
	for k, v := range pc.Env {
		env[k] = v
	}
	for k, v := range spec.Bootstrap.Env {
		env[k] = v
	}
	if spec.Bootstrap.SecretFile == "" && len(spec.Bootstrap.Secret) > 0 {
		env[provisioner.SecretEnv] = hex.EncodeToString(spec.Bootstrap.Secret)
	}
	hc := &container.HostConfig{NetworkMode: container.NetworkMode(pc.NetworkMode)}
	if pc.CPUs != nil {
		hc.Resources.NanoCPUs = int64(*pc.CPUs * 1e9)
	}
	if pc.MemoryMB != nil {
		hc.Resources.Memory = *pc.MemoryMB << 20
	}
	for _, m := range pc.Mounts {
		hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.Type(m.Type), Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly})
	}
	name := containerName(spec)
	r, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:       name,
		Config:     &container.Config{Image: pc.Image, Cmd: spec.Bootstrap.Command, Env: envList(env), Labels: labels},
		HostConfig: hc,
	})
	switch {
	case err == nil:
		for _, w := range r.Warnings {
			p.log.Warn("engine warning", "instance", spec.Name, "warning", w)
		}
		return r.ID, nil
	case cerrdefs.IsConflict(err):
		// A concurrent call of the same request holds the name: its
		// container shows up once the engine has finished creating it.
		key := map[string]string{provisioner.TagRequest: spec.Tags[provisioner.TagRequest], provisioner.TagInstance: spec.Name}
		for wait := time.Now().Add(conflictWait); ; {
			got, lerr := p.list(ctx, cli, key)
			if lerr == nil && len(got) > 0 {
				return got[0].ID, nil
			}
			if time.Now().After(wait) || ctx.Err() != nil {
				return "", fmt.Errorf("create container %s: %w", name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	case cerrdefs.IsNotFound(err):
		return "", provisioner.Permanent(fmt.Errorf("create container %s: %w", name, err))
	default:
		return "", fmt.Errorf("create container %s: %w", name, err)
	}
}

// copySecret writes the node's secret, in hex, at file in the container,
// readable by its owner only, before the container starts: unlike an
// environment variable, `docker inspect` does not show it.
func copySecret(ctx context.Context, cli *client.Client, id, file string, secret []byte) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := strings.Trim(path.Dir(file), "/")
	if dir != "" {
		parts := strings.Split(dir, "/")
		for i := range parts {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.Join(parts[:i+1], "/") + "/", Mode: 0o755}); err != nil {
				return err
			}
		}
	}
	body := []byte(hex.EncodeToString(secret) + "\n")
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(file, "/"), Mode: 0o400, Size: int64(len(body))}); err != nil {
		return err
	}
	if _, err := tw.Write(body); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if _, err := cli.CopyToContainer(ctx, id, client.CopyToContainerOptions{DestinationPath: "/", Content: &buf}); err != nil {
		return fmt.Errorf("write the secret file %s into container %s: %w", file, shortID(id), err)
	}
	return nil
}

// List implements provisioner.Provisioner.
func (p *Provisioner) List(ctx context.Context, tags map[string]string) ([]*provisioner.Instance, error) {
	cli, _, err := p.engine("")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return p.list(ctx, cli, tags)
}

func (p *Provisioner) list(ctx context.Context, cli *client.Client, tags map[string]string) ([]*provisioner.Instance, error) {
	f := client.Filters{}.Add("label", LabelProvisioner+"="+provisionerName)
	for k, v := range tags {
		f = f.Add("label", k+"="+v)
	}
	r, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list containers on %s: %w", p.host, err)
	}
	out := make([]*provisioner.Instance, 0, len(r.Items))
	for _, c := range r.Items {
		tags := map[string]string{}
		for k, v := range c.Labels {
			if k != LabelProvisioner {
				tags[k] = v
			}
		}
		state, reason := mapState(c.State, c.Status)
		out = append(out, &provisioner.Instance{
			ID:      c.ID,
			Name:    c.Labels[provisioner.TagInstance],
			Pool:    c.Labels[provisioner.TagPool],
			State:   state,
			Reason:  reason,
			Tags:    tags,
			Created: time.Unix(c.Created, 0),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Delete implements provisioner.Provisioner: it removes the containers,
// killing their agents; one that is gone already, or being removed, is no
// error.
func (p *Provisioner) Delete(ctx context.Context, ids []string) error {
	cli, _, err := p.engine("")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var errs []error
	for _, id := range ids {
		_, err := cli.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
		switch {
		case err == nil:
			p.log.Info("instance deleted", "container", shortID(id))
		case cerrdefs.IsNotFound(err):
		case cerrdefs.IsConflict(err) && strings.Contains(err.Error(), "already in progress"):
		default:
			errs = append(errs, fmt.Errorf("remove container %s: %w", shortID(id), err))
		}
	}
	return errors.Join(errs...)
}

// mapState maps a container's state to an instance state and reason.
func mapState(state container.ContainerState, status string) (string, string) {
	switch state {
	case container.StateCreated:
		return provisioner.StatePending, status
	case container.StateRunning, container.StatePaused, container.StateRestarting:
		return provisioner.StateRunning, ""
	case container.StateExited:
		return provisioner.StateStopped, status
	case container.StateDead:
		return provisioner.StateFailed, status
	case container.StateRemoving:
		return provisioner.StateDeleting, ""
	}
	return provisioner.StateUnknown, fmt.Sprintf("container state %q: %s", state, status)
}

var nameUnsafe = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

// containerName is "conveyor-NAME-HASH": readable in `docker ps`, and the
// same for the same request and instance (HASH covers the master, the
// pool, the request and the name), so the engine refuses a duplicate.
func containerName(spec *provisioner.InstanceSpec) string {
	h := sha256.New()
	for _, k := range []string{provisioner.TagMaster, provisioner.TagPool, provisioner.TagRequest, provisioner.TagInstance} {
		fmt.Fprintf(h, "%s=%s\x00", k, spec.Tags[k])
	}
	n := nameUnsafe.ReplaceAllString(spec.Name, "-")
	if len(n) > 40 {
		n = n[:40]
	}
	return fmt.Sprintf("conveyor-%s-%x", n, h.Sum(nil)[:6])
}

func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
