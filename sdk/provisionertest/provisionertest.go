// Package provisionertest is the conformance kit for provisioner plugins.
// A plugin author builds the plugin binary and runs the kit against it
// from an ordinary Go test, with a backend the test started:
//
//	func TestConformance(t *testing.T) {
//		provisionertest.Run(t, provisionertest.Options{
//			Plugin:    "../bin/conveyor-provisioner-mine",
//			Global:    `endpoint = "http://127.0.0.1:9000"`,
//			Pool:      `image = "agent:test"`,
//			Bootstrap: provisioner.Bootstrap{Command: []string{"conveyor-agent", "-version"}},
//			BadConfigs: []provisionertest.BadConfig{
//				{Name: "no image", Pool: `cpus = 1`, Field: []string{"image"}},
//			},
//		})
//	}
//
// The kit loads the plugin exactly the way the host does and checks the
// handshake, the schema, that bad configurations are rejected for the
// right field, health, create, that a create repeated with the same
// request id creates nothing, that List shows the instances with the tags
// the host gave them, that a plugin killed with SIGKILL and started again
// still lists them, delete, a second delete of the same instances, and
// that they are gone. It deletes what it created, whatever fails.
package provisionertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl/v2/hcldec"

	"github.com/conveyor-ci/conveyor/sdk/hclspec"
	"github.com/conveyor-ci/conveyor/sdk/provisioner"
)

// Options configures a conformance run.
type Options struct {
	// Plugin is the path of the plugin binary.
	Plugin string
	// Env is added to the plugin's environment.
	Env []string
	// Global is the body of a valid `provisioner "NAME" {}` block, in HCL.
	Global string
	// Pool is the body of a valid per-pool block, in HCL.
	Pool string
	// Bootstrap is how the kit's instances start their agent. The kit
	// needs no agent to connect anywhere: a command that runs and exits is
	// enough (the instances then report StateStopped).
	Bootstrap provisioner.Bootstrap
	// BadConfigs must each be rejected, by schema decoding or by
	// Configure, for the field they name.
	BadConfigs []BadConfig
	// Instances is how many instances the kit creates (default 2).
	Instances int
	// PoolName names the pool (default "conformance").
	PoolName string
	// MasterID is the master identity the kit's instances are tagged
	// with (default: a random one, so that runs never see each other's).
	MasterID string
	// DataDir is handed to the plugin as its data directory (default: a
	// temporary directory).
	DataDir string
	// Timeout bounds each check (default 60s).
	Timeout time.Duration
	// Logger receives the plugin's logs (default: discarded).
	Logger hclog.Logger
}

// BadConfig is a configuration the plugin must reject. An empty Global or
// Pool means the valid one from Options.
type BadConfig struct {
	Name   string
	Global string
	Pool   string
	// Field is the path of the attribute the rejection must point at
	// (["image"], ["mount[0]", "target"]): a ConfigError of that Path, or
	// a schema diagnostic naming its last element. Empty: any rejection.
	Field []string
}

// Result is the outcome of one check.
type Result struct {
	Name string
	Err  error
}

// Check names, in the order they run.
const (
	CheckHandshake    = "handshake"
	CheckSchema       = "schema"
	CheckConfigure    = "configure"
	CheckConfigErrors = "configure-errors"
	CheckHealth       = "health"
	CheckCreate       = "create"
	CheckIdempotent   = "create-idempotent"
	CheckListTags     = "list-tags"
	CheckRestart      = "sigkill-then-list"
	CheckDelete       = "delete"
	CheckDeleteAgain  = "delete-twice"
	CheckGone         = "list-after-delete"
	CheckKill         = "kill"
)

// Run runs every check as a subtest of t.
func Run(t *testing.T, opts Options) {
	t.Helper()
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
	}
	for _, r := range Check(context.Background(), opts) {
		t.Run(r.Name, func(t *testing.T) {
			if r.Err != nil {
				t.Fatal(r.Err)
			}
		})
	}
}

// Check runs every check and returns their results. A check whose
// prerequisite failed is reported as failed with the reason.
func Check(ctx context.Context, opts Options) []Result {
	k := &kit{opts: opts}
	if k.opts.PoolName == "" {
		k.opts.PoolName = "conformance"
	}
	if k.opts.Instances <= 0 {
		k.opts.Instances = 2
	}
	if k.opts.MasterID == "" {
		k.opts.MasterID = "provisionertest-" + randomHex(6)
	}
	if k.opts.Timeout == 0 {
		k.opts.Timeout = 60 * time.Second
	}
	if k.opts.Logger == nil {
		k.opts.Logger = hclog.NewNullLogger()
	}
	if k.opts.DataDir == "" {
		dir, err := os.MkdirTemp("", "provisionertest-")
		if err == nil {
			defer os.RemoveAll(dir)
		}
		k.opts.DataDir = dir
	}
	k.request = "req-" + randomHex(8)
	defer k.cleanup(ctx)

	steps := []struct {
		name     string
		fn       func(context.Context) error
		required bool
	}{
		{CheckHandshake, k.handshake, true},
		{CheckSchema, k.schema, true},
		{CheckConfigure, k.configure, true},
		{CheckConfigErrors, k.configErrors, false},
		{CheckHealth, k.health, true},
		{CheckCreate, k.create, true},
		{CheckIdempotent, k.idempotent, false},
		{CheckListTags, k.listTags, false},
		{CheckRestart, k.restart, true},
		{CheckDelete, k.delete, true},
		{CheckDeleteAgain, k.deleteAgain, false},
		{CheckGone, k.gone, false},
		{CheckKill, k.kill, false},
	}
	var results []Result
	var blocked error
	for _, s := range steps {
		if s.name == CheckKill {
			k.deleteLeftovers(ctx)
		}
		if blocked != nil && s.name != CheckKill {
			results = append(results, Result{s.name, fmt.Errorf("not run: %w", blocked)})
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, k.opts.Timeout)
		err := s.fn(cctx)
		cancel()
		results = append(results, Result{s.name, err})
		if err != nil && blocked == nil && s.required {
			blocked = fmt.Errorf("%s failed", s.name)
		}
	}
	return results
}

type kit struct {
	opts       Options
	proc       *provisioner.Process
	globalSpec hcldec.Spec
	poolSpec   hcldec.Spec
	request    string
	created    []*provisioner.Instance
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// deleteLeftovers deletes whatever carries the kit's master tag: a failed
// run leaves no instance behind.
func (k *kit) deleteLeftovers(ctx context.Context) {
	if k.proc == nil || k.proc.Exited() {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, k.opts.Timeout)
	defer cancel()
	if ins, err := k.proc.Provisioner.List(cctx, k.masterTags()); err == nil && len(ins) > 0 {
		_ = k.proc.Provisioner.Delete(cctx, ids(ins))
	}
}

// cleanup deletes leftovers (when a check panicked past the kill check)
// and stops the plugin.
func (k *kit) cleanup(ctx context.Context) {
	k.deleteLeftovers(ctx)
	if k.proc != nil {
		k.proc.Kill()
	}
}

func (k *kit) masterTags() map[string]string {
	return map[string]string{provisioner.TagMaster: k.opts.MasterID}
}

func ids(ins []*provisioner.Instance) []string {
	out := make([]string, len(ins))
	for i, in := range ins {
		out[i] = in.ID
	}
	return out
}

func (k *kit) start(ctx context.Context) error {
	p, err := provisioner.Start(ctx, provisioner.ClientOptions{Path: k.opts.Plugin, Logger: k.opts.Logger, Env: k.opts.Env})
	if err != nil {
		return fmt.Errorf("load plugin: %w", err)
	}
	k.proc = p
	return nil
}

func (k *kit) handshake(ctx context.Context) error {
	if err := k.start(ctx); err != nil {
		return err
	}
	if k.proc.Info.Name == "" {
		return errors.New("Info returned an empty name")
	}
	if k.proc.Info.Version == "" {
		return errors.New("Info returned an empty version")
	}
	return nil
}

func (k *kit) schema(ctx context.Context) error {
	s, err := k.proc.Provisioner.Schema(ctx)
	if err != nil {
		return err
	}
	if k.globalSpec, err = hclspec.Convert(s.Global); err != nil {
		return fmt.Errorf("global schema: %w", err)
	}
	if k.poolSpec, err = hclspec.Convert(s.Pool); err != nil {
		return fmt.Errorf("pool schema: %w", err)
	}
	return nil
}

func (k *kit) config(global, pool string) (*provisioner.Config, error) {
	g, err := hclspec.DecodeSource("global.hcl", global, k.globalSpec)
	if err != nil {
		return nil, fmt.Errorf("global block: %w", err)
	}
	p, err := hclspec.DecodeSource("pool.hcl", pool, k.poolSpec)
	if err != nil {
		return nil, fmt.Errorf("pool block: %w", err)
	}
	return &provisioner.Config{
		Host:   provisioner.Host{ServerName: "provisionertest", DataDir: k.opts.DataDir, Version: "test", MasterID: k.opts.MasterID},
		Global: g,
		Pools:  []*provisioner.Pool{{Name: k.opts.PoolName, Config: p}},
	}, nil
}

func (k *kit) configure(ctx context.Context) error {
	cfg, err := k.config(k.opts.Global, k.opts.Pool)
	if err != nil {
		return fmt.Errorf("valid configuration does not match the plugin's schema: %w", err)
	}
	if err := k.proc.Provisioner.Configure(ctx, cfg); provisioner.ConfigureFailed(err) {
		return fmt.Errorf("valid configuration refused: %w", err)
	}
	return nil
}

func (k *kit) configErrors(ctx context.Context) error {
	for _, bad := range k.opts.BadConfigs {
		global, pool := bad.Global, bad.Pool
		if global == "" {
			global = k.opts.Global
		}
		if pool == "" {
			pool = k.opts.Pool
		}
		cfg, err := k.config(global, pool)
		if err != nil {
			// Rejected by the schema: it must name the field.
			if len(bad.Field) > 0 && !strings.Contains(err.Error(), bad.Field[len(bad.Field)-1]) {
				return fmt.Errorf("bad configuration %q: the schema rejects it, but not for %s: %v", bad.Name, strings.Join(bad.Field, "."), err)
			}
			continue
		}
		err = k.proc.Provisioner.Configure(ctx, cfg)
		if !provisioner.ConfigureFailed(err) {
			return fmt.Errorf("bad configuration %q was accepted", bad.Name)
		}
		var ces provisioner.ConfigErrors
		if !errors.As(err, &ces) {
			return fmt.Errorf("bad configuration %q: Configure must return provisioner.ConfigErrors, got %v", bad.Name, err)
		}
		found := len(bad.Field) == 0
		for _, ce := range ces {
			if ce.Message == "" {
				return fmt.Errorf("bad configuration %q: a ConfigError has no message", bad.Name)
			}
			if !ce.Warning && slices.Equal(ce.Path, bad.Field) {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("bad configuration %q: rejected, but not for %s: %v", bad.Name, strings.Join(bad.Field, "."), err)
		}
	}
	// Leave the plugin configured with the valid configuration.
	return k.configure(ctx)
}

func (k *kit) health(ctx context.Context) error {
	return k.proc.Provisioner.Health(ctx)
}

func (k *kit) newRequest() *provisioner.CreateRequest {
	req := &provisioner.CreateRequest{RequestID: k.request, Pool: k.opts.PoolName, Tags: k.masterTags()}
	for i := 0; i < k.opts.Instances; i++ {
		req.Instances = append(req.Instances, &provisioner.InstanceSpec{
			Name:      fmt.Sprintf("%s-%d", k.opts.PoolName, i+1),
			Bootstrap: k.opts.Bootstrap,
		})
	}
	return req
}

func (k *kit) create(ctx context.Context) error {
	req := k.newRequest()
	ins, err := k.proc.Provisioner.Create(ctx, req)
	if err != nil {
		return err
	}
	if len(ins) != len(req.Instances) {
		return fmt.Errorf("Create of %d instances returned %d", len(req.Instances), len(ins))
	}
	for i, in := range ins {
		if in.ID == "" {
			return fmt.Errorf("instance %d has no id", i)
		}
		if in.Name != req.Instances[i].Name {
			return fmt.Errorf("instance %d is named %q, want %q (the order of the request)", i, in.Name, req.Instances[i].Name)
		}
	}
	k.created = ins
	return nil
}

func (k *kit) idempotent(ctx context.Context) error {
	ins, err := k.proc.Provisioner.Create(ctx, k.newRequest())
	if err != nil {
		return fmt.Errorf("repeated Create: %w", err)
	}
	if !slices.Equal(ids(ins), ids(k.created)) {
		return fmt.Errorf("repeated Create of request %s returned instances %v, the first one %v", k.request, ids(ins), ids(k.created))
	}
	all, err := k.proc.Provisioner.List(ctx, k.masterTags())
	if err != nil {
		return err
	}
	if len(all) != len(k.created) {
		return fmt.Errorf("after a repeated Create, List shows %d instances, want %d", len(all), len(k.created))
	}
	return nil
}

// findAll checks that List with the master's tag shows exactly the
// created instances, with the tags the host gave them.
func (k *kit) findAll(ctx context.Context, p provisioner.Provisioner) error {
	all, err := p.List(ctx, k.masterTags())
	if err != nil {
		return err
	}
	if len(all) != len(k.created) {
		return fmt.Errorf("List by %s shows %d instances, want %d", provisioner.TagMaster, len(all), len(k.created))
	}
	byID := map[string]*provisioner.Instance{}
	for _, in := range all {
		byID[in.ID] = in
	}
	for _, c := range k.created {
		in := byID[c.ID]
		if in == nil {
			return fmt.Errorf("instance %s (%s) is not listed", c.ID, c.Name)
		}
		want := map[string]string{
			provisioner.TagMaster:   k.opts.MasterID,
			provisioner.TagPool:     k.opts.PoolName,
			provisioner.TagRequest:  k.request,
			provisioner.TagInstance: c.Name,
		}
		if !in.HasTags(want) {
			return fmt.Errorf("instance %s carries tags %v, want at least %v", c.Name, in.Tags, want)
		}
		if in.Name != c.Name || in.Pool != k.opts.PoolName {
			return fmt.Errorf("instance %s is listed as %q in pool %q", c.ID, in.Name, in.Pool)
		}
		if in.State == "" {
			return fmt.Errorf("instance %s has no state", c.Name)
		}
	}
	one, err := p.List(ctx, map[string]string{provisioner.TagInstance: k.created[0].Name, provisioner.TagMaster: k.opts.MasterID})
	if err != nil {
		return err
	}
	if len(one) != 1 || one[0].ID != k.created[0].ID {
		return fmt.Errorf("List by %s=%s shows %v, want only %s", provisioner.TagInstance, k.created[0].Name, ids(one), k.created[0].ID)
	}
	none, err := p.List(ctx, map[string]string{provisioner.TagMaster: k.opts.MasterID + "-other"})
	if err != nil {
		return err
	}
	if len(none) != 0 {
		return fmt.Errorf("List by another master's tag shows %v", ids(none))
	}
	return nil
}

func (k *kit) listTags(ctx context.Context) error { return k.findAll(ctx, k.proc.Provisioner) }

// restart kills the plugin with SIGKILL, starts it again and expects List
// to find every instance: what exists lives in the backend.
func (k *kit) restart(ctx context.Context) error {
	pid := k.proc.Pid()
	if pid <= 0 {
		return errors.New("plugin has no process id")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("SIGKILL the plugin: %w", err)
	}
	for !k.proc.Exited() {
		select {
		case <-ctx.Done():
			return errors.New("plugin did not exit on SIGKILL")
		case <-time.After(20 * time.Millisecond):
		}
	}
	k.proc.Kill()
	k.proc = nil
	if err := k.start(ctx); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	if err := k.configure(ctx); err != nil {
		return fmt.Errorf("after restart: %w", err)
	}
	if err := k.findAll(ctx, k.proc.Provisioner); err != nil {
		return fmt.Errorf("after SIGKILL and restart: %w", err)
	}
	return nil
}

func (k *kit) delete(ctx context.Context) error {
	return k.proc.Provisioner.Delete(ctx, ids(k.created))
}

func (k *kit) deleteAgain(ctx context.Context) error {
	if err := k.proc.Provisioner.Delete(ctx, ids(k.created)); err != nil {
		return fmt.Errorf("deleting deleted instances: %w", err)
	}
	return nil
}

// gone waits for the deleted instances to leave List (they may show as
// StateDeleting meanwhile).
func (k *kit) gone(ctx context.Context) error {
	for {
		all, err := k.proc.Provisioner.List(ctx, k.masterTags())
		if err != nil {
			return err
		}
		var left []string
		for _, in := range all {
			if in.State != provisioner.StateDeleting {
				left = append(left, fmt.Sprintf("%s (%s)", in.Name, in.State))
			}
		}
		if len(all) == 0 {
			return nil
		}
		if len(left) > 0 {
			return fmt.Errorf("deleted instances still listed: %v", left)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("instances still deleting: %v", ids(all))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (k *kit) kill(ctx context.Context) error {
	if k.proc == nil {
		return nil
	}
	k.proc.Kill()
	for !k.proc.Exited() {
		select {
		case <-ctx.Done():
			return errors.New("plugin did not exit")
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}
