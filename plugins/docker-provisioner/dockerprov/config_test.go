package dockerprov

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/moby/moby/api/types/container"

	"github.com/conveyor-ci/conveyor/sdk/provisioner"
)

func ptr[T any](v T) *T { return &v }

func TestCheckPool(t *testing.T) {
	valid := func() poolConfig { return poolConfig{Image: "agent:1", NetworkMode: "host"} }
	for _, tc := range []struct {
		name string
		edit func(*poolConfig)
		path []string
	}{
		{"valid", func(*poolConfig) {}, nil},
		{"valid everything", func(p *poolConfig) {
			p.CPUs, p.MemoryMB, p.Env = ptr(1.5), ptr(int64(512)), map[string]string{"A": "b"}
			p.Mounts = []mountConfig{{Type: "bind", Source: "/srv", Target: "/srv"}, {Type: "volume", Source: "cache", Target: "/cache"}, {Type: "tmpfs", Target: "/tmp"}}
		}, nil},
		{"no image", func(p *poolConfig) { p.Image = "" }, []string{"image"}},
		{"negative cpus", func(p *poolConfig) { p.CPUs = ptr(-1.0) }, []string{"cpus"}},
		{"tiny memory", func(p *poolConfig) { p.MemoryMB = ptr(int64(2)) }, []string{"memory_mb"}},
		{"no network", func(p *poolConfig) { p.NetworkMode = "" }, []string{"network_mode"}},
		{"bad env", func(p *poolConfig) { p.Env = map[string]string{"A=B": "c"} }, []string{"env"}},
		{"bad mount type", func(p *poolConfig) { p.Mounts = []mountConfig{{Type: "nfs", Target: "/x"}} }, []string{"mount[0]", "type"}},
		{"relative bind", func(p *poolConfig) { p.Mounts = []mountConfig{{Type: "bind", Source: "x", Target: "/x"}} }, []string{"mount[0]", "source"}},
		{"volume without name", func(p *poolConfig) { p.Mounts = []mountConfig{{Type: "volume", Target: "/x"}} }, []string{"mount[0]", "source"}},
		{"tmpfs with source", func(p *poolConfig) { p.Mounts = []mountConfig{{Type: "tmpfs", Source: "x", Target: "/x"}} }, []string{"mount[0]", "source"}},
		{"relative target", func(p *poolConfig) { p.Mounts = []mountConfig{{Type: "tmpfs", Target: "x"}} }, []string{"mount[0]", "target"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := valid()
			tc.edit(&p)
			es := checkPool("linux", &p)
			if tc.path == nil {
				if len(es) != 0 {
					t.Fatal(es)
				}
				return
			}
			if len(es) != 1 || !slices.Equal(es[0].Path, tc.path) || es[0].Pool != "linux" || es[0].Message == "" {
				t.Fatalf("got %v, want one error at %v", es, tc.path)
			}
		})
	}
}

func TestCheckGlobal(t *testing.T) {
	for host, bad := range map[string]bool{"": false, "unix:///var/run/docker.sock": false, "tcp://127.0.0.1:2375": false, "ftp://x": true, "nonsense": true} {
		es := checkGlobal(&globalConfig{Host: host})
		if (len(es) > 0) != bad {
			t.Errorf("host %q: %v", host, es)
		}
		if bad && (len(es) != 1 || es[0].Path[0] != "host") {
			t.Errorf("host %q: %v, want an error at host", host, es)
		}
	}
}

// TestValidateOnlyConnectsToNothing: validation needs no engine.
func TestValidateOnlyConnectsToNothing(t *testing.T) {
	p := New(hclog.NewNullLogger())
	if err := p.Configure(context.Background(), &provisioner.Config{Host: provisioner.Host{ValidateOnly: true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.List(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "not configured") {
		t.Fatalf("list after validate-only: %v", err)
	}
}

func TestMapState(t *testing.T) {
	for state, want := range map[container.ContainerState]string{
		container.StateCreated: provisioner.StatePending, container.StateRunning: provisioner.StateRunning,
		container.StateExited: provisioner.StateStopped, container.StateDead: provisioner.StateFailed,
		container.StateRemoving: provisioner.StateDeleting, "weird": provisioner.StateUnknown,
	} {
		if got, _ := mapState(state, "Exited (1) 2 seconds ago"); got != want {
			t.Errorf("%s: %s, want %s", state, got, want)
		}
	}
}

func TestContainerName(t *testing.T) {
	spec := func(master, req, name string) *provisioner.InstanceSpec {
		return &provisioner.InstanceSpec{Name: name, Tags: map[string]string{provisioner.TagMaster: master, provisioner.TagPool: "p", provisioner.TagRequest: req, provisioner.TagInstance: name}}
	}
	a := containerName(spec("m1", "r1", "linux/1 x"))
	if a != containerName(spec("m1", "r1", "linux/1 x")) {
		t.Fatal("the name is not stable")
	}
	if !strings.HasPrefix(a, "conveyor-linux-1-x-") {
		t.Errorf("name %q", a)
	}
	for _, other := range []string{containerName(spec("m2", "r1", "linux/1 x")), containerName(spec("m1", "r2", "linux/1 x"))} {
		if other == a {
			t.Errorf("another master or request gets the same name %q", a)
		}
	}
}
