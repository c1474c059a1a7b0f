package provisioner

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/go-plugin"
	"github.com/zclconf/go-cty/cty"
)

// fake is an in-memory provisioner for the glue's tests.
type fake struct {
	cfg       *Config
	created   map[string]*Instance
	createErr error
}

func (f *fake) Info(context.Context) (*Info, error)     { return &Info{Name: "fake", Version: "1"}, nil }
func (f *fake) Schema(context.Context) (*Schema, error) { return &Schema{}, nil }
func (f *fake) Configure(_ context.Context, cfg *Config) error {
	f.cfg = cfg
	if len(cfg.Pools) > 0 && cfg.Pools[0].Name == "bad" {
		return ConfigErrors{{Pool: "bad", Path: []string{"image"}, Message: "missing"}}
	}
	return nil
}
func (f *fake) Create(_ context.Context, req *CreateRequest) ([]*Instance, error) {
	var out []*Instance
	for _, s := range req.Instances {
		in := &Instance{ID: "id-" + s.Name, Name: s.Name, Pool: req.Pool, State: StateRunning, Tags: s.Tags}
		f.created[in.ID] = in
		out = append(out, in)
		if f.createErr != nil {
			return out, f.createErr
		}
	}
	return out, nil
}
func (f *fake) List(_ context.Context, tags map[string]string) ([]*Instance, error) {
	var out []*Instance
	for _, in := range f.created {
		if in.HasTags(tags) {
			out = append(out, in)
		}
	}
	return out, nil
}
func (f *fake) Delete(_ context.Context, ids []string) error {
	for _, id := range ids {
		delete(f.created, id)
	}
	return nil
}
func (f *fake) Health(context.Context) error { return errors.New("engine unreachable") }

// connect serves f over a real gRPC connection, as Serve does, and
// returns the host's client.
func connect(t *testing.T, f *fake) Provisioner {
	t.Helper()
	client, _ := plugin.TestPluginGRPCConn(t, false, map[string]plugin.Plugin{pluginName: &grpcPlugin{impl: f}})
	t.Cleanup(func() { client.Close() })
	raw, err := client.Dispense(pluginName)
	if err != nil {
		t.Fatal(err)
	}
	return raw.(Provisioner)
}

func TestGlue(t *testing.T) {
	f := &fake{created: map[string]*Instance{}}
	p := connect(t, f)
	ctx := context.Background()

	err := p.Configure(ctx, &Config{Host: Host{MasterID: "m1"}, Global: cty.ObjectVal(map[string]cty.Value{"host": cty.StringVal("x")}), Pools: []*Pool{{Name: "bad"}}})
	var ces ConfigErrors
	if !errors.As(err, &ces) || len(ces) != 1 || ces[0].Pool != "bad" || ces[0].Path[0] != "image" {
		t.Fatalf("configure: %v, want the pool's image error", err)
	}
	if f.cfg.Host.MasterID != "m1" || f.cfg.Global.GetAttr("host").AsString() != "x" {
		t.Fatalf("the plugin got %+v", f.cfg)
	}
	if got := ces.Error(); got != `pool "bad" image: missing` {
		t.Errorf("error text %q", got)
	}

	req := &CreateRequest{RequestID: "r1", Pool: "p", Tags: map[string]string{TagMaster: "m1"},
		Instances: []*InstanceSpec{{Name: "p-1", Bootstrap: Bootstrap{Command: []string{"agent"}}}, {Name: "p-2", Bootstrap: Bootstrap{Command: []string{"agent"}}}}}
	ins, err := p.Create(ctx, req)
	if err != nil || len(ins) != 2 {
		t.Fatalf("create: %v %v", ins, err)
	}
	want := map[string]string{TagMaster: "m1", TagPool: "p", TagRequest: "r1", TagInstance: "p-2"}
	if !ins[1].HasTags(want) || len(ins[1].Tags) != len(want) {
		t.Fatalf("instance tags %v, want %v", ins[1].Tags, want)
	}
	listed, err := p.List(ctx, map[string]string{TagInstance: "p-1"})
	if err != nil || len(listed) != 1 || listed[0].ID != "id-p-1" {
		t.Fatalf("list: %v %v", listed, err)
	}

	// A partial failure keeps what was created, and Permanent crosses.
	f.createErr = Permanent(errors.New("image missing"))
	ins, err = p.Create(ctx, &CreateRequest{RequestID: "r2", Pool: "p", Instances: []*InstanceSpec{{Name: "q", Bootstrap: Bootstrap{Command: []string{"a"}}}}})
	if len(ins) != 1 || !IsPermanent(err) || !strings.Contains(err.Error(), "image missing") {
		t.Fatalf("partial create: %v, %v; want one instance and a permanent error", ins, err)
	}
	f.createErr = errors.New("engine busy")
	_, err = p.Create(ctx, &CreateRequest{RequestID: "r3", Pool: "p", Instances: []*InstanceSpec{{Name: "q3", Bootstrap: Bootstrap{Command: []string{"a"}}}}})
	if err == nil || IsPermanent(err) {
		t.Fatalf("transient create error: %v", err)
	}

	if err := p.Health(ctx); err == nil || !strings.Contains(err.Error(), "engine unreachable") {
		t.Fatalf("health: %v", err)
	}
	if err := p.Delete(ctx, []string{"id-p-1", "id-p-1", "unknown"}); err != nil {
		t.Fatal(err)
	}
}

func TestCreateRequestValidate(t *testing.T) {
	ok := func() *CreateRequest {
		return &CreateRequest{RequestID: "r", Pool: "p", Instances: []*InstanceSpec{{Name: "a", Bootstrap: Bootstrap{Command: []string{"x"}}}}}
	}
	for _, tc := range []struct {
		name string
		edit func(*CreateRequest)
		want string
	}{
		{"valid", func(*CreateRequest) {}, ""},
		{"no request id", func(r *CreateRequest) { r.RequestID = "" }, "empty request id"},
		{"no pool", func(r *CreateRequest) { r.Pool = "" }, "empty pool"},
		{"no instances", func(r *CreateRequest) { r.Instances = nil }, "no instances"},
		{"twice", func(r *CreateRequest) { r.Instances = append(r.Instances, r.Instances[0]) }, `instance "a" twice`},
		{"no command", func(r *CreateRequest) { r.Instances[0].Bootstrap.Command = nil }, "no agent command"},
		{"relative secret file", func(r *CreateRequest) { r.Instances[0].Bootstrap.SecretFile = "secret" }, "not an absolute path"},
		{"empty tag", func(r *CreateRequest) { r.Tags = map[string]string{TagMaster: ""} }, "empty tag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ok()
			tc.edit(r)
			err := r.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
