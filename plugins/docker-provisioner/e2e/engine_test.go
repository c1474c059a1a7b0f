package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/conveyor-ci/conveyor/plugins/docker-provisioner/dockertest"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/provisioner"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// TestAgentConnectsOverKafka runs a pooled agent the way core will: the
// Kafka launcher (its embedded broker on loopback) gives the node's secret
// and agent command, the Docker provisioner starts a container of the
// static conveyor-agent with them on the host's network, and the agent's
// Hello and Pongs reach the launcher's connection. Then the provisioner
// plugin is killed with SIGKILL: the container runs on, a new plugin
// lists it by its tags, and deletes it.
func TestAgentConnectsOverKafka(t *testing.T) {
	eng := dockertest.Start(t)
	image := eng.AgentImage(t, "conveyor-agent:kafka")
	ctx := ctxT(t)
	const node, pool, master, secretFile = "linux-1", "linux", "master-e2e", "/run/conveyor/secret"

	// The launcher: its embedded broker on a loopback port.
	kl, err := launcher.Start(ctx, launcher.ClientOptions{Path: kafkaBin, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kl.Kill)
	lsch, err := kl.Launcher.Schema(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lcfg := &launcher.Config{
		Host:   launcher.Host{ServerName: "e2e", DataDir: t.TempDir(), Version: "test"},
		Global: decode(t, fmt.Sprintf("embedded_addr = %q", freeAddr(t)), lsch.Global),
		Nodes:  []*launcher.Node{{Name: node, Labels: []string{"linux"}}},
	}
	if err := kl.Launcher.Configure(ctx, lcfg); launcher.ConfigureFailed(err) {
		t.Fatal(err)
	}
	if kl.Secrets == nil {
		t.Fatal("the Kafka launcher has no secret manager")
	}
	ns, err := kl.Secrets.NodeSecret(ctx, node)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := kl.Launcher.Launch(ctx, lcfg.Nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })

	// The bootstrap core will build: the launcher's agent command, with
	// the secret file where the provisioner writes it.
	cmd := slices.Clone(ns.AgentCommand)
	for i := range cmd {
		if cmd[i] == "-secret-file" && i+1 < len(cmd) {
			cmd[i+1] = secretFile
		}
	}
	p := startPlugin(t, eng, master, pool, fmt.Sprintf("image = %q\ncpus = 0.5\nmemory_mb = 256\nenv = { POOL_ENV = \"from-pool\" }\nmount {\n type = \"tmpfs\"\n target = \"/scratch\"\n}", image))
	req := &provisioner.CreateRequest{
		RequestID: "req-kafka",
		Pool:      pool,
		Tags:      map[string]string{provisioner.TagMaster: master},
		Instances: []*provisioner.InstanceSpec{{Name: node, Bootstrap: provisioner.Bootstrap{
			Command: cmd, Env: map[string]string{"CONVEYOR_AGENT_LOG_LEVEL": "debug"}, Secret: ns.Secret, SecretFile: secretFile, Labels: []string{"linux"},
		}}},
	}
	created := time.Now()
	ins, err := p.Provisioner.Create(ctx, req)
	if err != nil {
		t.Fatalf("create: %v\nengine log:\n%s", err, eng.Log())
	}
	t.Logf("create took %v", time.Since(created).Round(time.Millisecond))
	if len(ins) != 1 || ins[0].State != provisioner.StateRunning {
		t.Fatalf("created %+v, want one running instance", ins)
	}
	id := ins[0].ID

	// The container is what the pool says, started with the bootstrap.
	ci, err := eng.Client.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := ci.Container
	if !slices.Equal(c.Config.Cmd, cmd) {
		t.Errorf("container command %q, want %q", c.Config.Cmd, cmd)
	}
	for _, want := range []string{"POOL_ENV=from-pool", "CONVEYOR_AGENT_LOG_LEVEL=debug"} {
		if !slices.Contains(c.Config.Env, want) {
			t.Errorf("container env %q lacks %s", c.Config.Env, want)
		}
	}
	for _, e := range c.Config.Env {
		if strings.HasPrefix(e, provisioner.SecretEnv+"=") {
			t.Errorf("the secret is in the environment (%s) although it went to a file", e)
		}
	}
	if got := string(c.HostConfig.NetworkMode); got != "host" {
		t.Errorf("network mode %q, want host (the default)", got)
	}
	if c.HostConfig.NanoCPUs != 5e8 || c.HostConfig.Memory != 256<<20 {
		t.Errorf("resources: %d nano CPUs, %d bytes, want 5e8 and %d", c.HostConfig.NanoCPUs, c.HostConfig.Memory, 256<<20)
	}
	if len(c.HostConfig.Mounts) != 1 || c.HostConfig.Mounts[0].Target != "/scratch" {
		t.Errorf("mounts %+v, want a tmpfs on /scratch", c.HostConfig.Mounts)
	}
	for k, v := range map[string]string{provisioner.TagPool: pool, provisioner.TagMaster: master, provisioner.TagRequest: "req-kafka", provisioner.TagInstance: node} {
		if c.Config.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, c.Config.Labels[k], v)
		}
	}

	// The agent reached the broker: its Hello names the node, and it
	// answers pings.
	hello := waitHello(t, ctx, conn, eng, id)
	t.Logf("create to the agent's Hello: %v", time.Since(created).Round(time.Millisecond))
	if hello.Node != node {
		t.Fatalf("hello from node %q, want %q", hello.Node, node)
	}
	if err := conn.Send(wire.Marshal(&wire.Ping{Nonce: 77, UnixNano: time.Now().UnixNano()})); err != nil {
		t.Fatal(err)
	}
	for {
		m := recvMsg(t, ctx, conn)
		if pong, ok := m.(*wire.Pong); ok {
			if pong.Nonce != 77 {
				t.Fatalf("pong nonce %d, want 77", pong.Nonce)
			}
			break
		}
	}

	// SIGKILL the provisioner plugin: the container lives in the engine,
	// and a new plugin finds it by its tags.
	if err := syscall.Kill(p.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the plugin to exit", func() bool { return p.Exited() })
	p2 := startPlugin(t, eng, master, pool, fmt.Sprintf("image = %q", image))
	found, err := p2.Provisioner.List(ctx, map[string]string{provisioner.TagMaster: master, provisioner.TagPool: pool})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0].ID != id || found[0].State != provisioner.StateRunning || found[0].Tags[provisioner.TagRequest] != "req-kafka" {
		t.Fatalf("after SIGKILL, List shows %+v, want the running instance %s of request req-kafka", found, id)
	}
	// The same request again, from the new plugin: the same container.
	again, err := p2.Provisioner.Create(ctx, req)
	if err != nil || len(again) != 1 || again[0].ID != id {
		t.Fatalf("repeated create after restart: %+v, %v; want %s", again, err, id)
	}
	if err := p2.Provisioner.Delete(ctx, []string{id}); err != nil {
		t.Fatal(err)
	}
	if err := p2.Provisioner.Delete(ctx, []string{id}); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	r, err := eng.Client.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Items) != 0 {
		t.Fatalf("%d containers left after delete", len(r.Items))
	}
}

// TestConcurrentCreateSameRequest: two Creates of the same request at once
// make one container per instance.
func TestConcurrentCreateSameRequest(t *testing.T) {
	eng := dockertest.Start(t)
	image := eng.AgentImage(t, "conveyor-agent:concurrent")
	ctx := ctxT(t)
	p := startPlugin(t, eng, "m1", "burst", fmt.Sprintf("image = %q\nnetwork_mode = \"none\"", image))
	req := func() *provisioner.CreateRequest {
		r := &provisioner.CreateRequest{RequestID: "req-burst", Pool: "burst", Tags: map[string]string{provisioner.TagMaster: "m1"}}
		for i := 1; i <= 3; i++ {
			r.Instances = append(r.Instances, &provisioner.InstanceSpec{
				Name:      fmt.Sprintf("burst-%d", i),
				Bootstrap: provisioner.Bootstrap{Command: []string{"conveyor-agent", "-version"}, Secret: []byte("s")},
			})
		}
		return r
	}
	var wg sync.WaitGroup
	results := make([][]*provisioner.Instance, 4)
	errs := make([]error, 4)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = p.Provisioner.Create(ctx, req())
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
		if len(results[i]) != 3 {
			t.Fatalf("create %d returned %d instances", i, len(results[i]))
		}
		for j := range results[i] {
			if results[i][j].ID != results[0][j].ID {
				t.Fatalf("creates %d and 0 disagree on instance %d: %s vs %s", i, j, results[i][j].ID, results[0][j].ID)
			}
		}
	}
	r, err := eng.Client.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Items) != 3 {
		t.Fatalf("%d containers for 3 instances created 4 times at once", len(r.Items))
	}
	// A Create that died between creating the container and starting it
	// left a container "created": the repeated request starts that one.
	half := &provisioner.CreateRequest{RequestID: "req-half", Pool: "burst", Tags: map[string]string{provisioner.TagMaster: "m1"},
		Instances: []*provisioner.InstanceSpec{{Name: "half-1", Bootstrap: provisioner.Bootstrap{Command: []string{"conveyor-agent", "-version"}}}}}
	if err := half.Validate(); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"conveyor.provisioner": "docker"}
	for k, v := range half.Instances[0].Tags {
		labels[k] = v
	}
	cr, err := eng.Client.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config:     &container.Config{Image: image, Cmd: []string{"conveyor-agent", "-version"}, Labels: labels},
		HostConfig: &container.HostConfig{NetworkMode: "none"},
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := p.Provisioner.Create(ctx, half)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != cr.ID || got[0].State == provisioner.StatePending {
		t.Fatalf("repeated create of a half-done request: %+v, want container %s started", got, cr.ID)
	}
	r, err = eng.Client.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Items) != 4 {
		t.Fatalf("%d containers, want 4: the half-done one was not adopted", len(r.Items))
	}

	// Without a secret file the secret travels in the environment, in hex.
	ci, err := eng.Client.ContainerInspect(ctx, results[0][0].ID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(ci.Container.Config.Env, provisioner.SecretEnv+"=73") {
		t.Errorf("env %q lacks %s=73", ci.Container.Config.Env, provisioner.SecretEnv)
	}
}

// TestImageMissing: an engine without the pool's image refuses at once,
// with a permanent error naming the image, and nothing is created.
func TestImageMissing(t *testing.T) {
	eng := dockertest.Start(t)
	ctx := ctxT(t)
	p := startPlugin(t, eng, "m1", "nope", `image = "conveyor-agent:missing"`)
	req := &provisioner.CreateRequest{RequestID: "req-1", Pool: "nope", Tags: map[string]string{provisioner.TagMaster: "m1"},
		Instances: []*provisioner.InstanceSpec{{Name: "nope-1", Bootstrap: provisioner.Bootstrap{Command: []string{"conveyor-agent"}}}}}
	for range 2 {
		start := time.Now()
		ins, err := p.Provisioner.Create(ctx, req)
		if err == nil {
			t.Fatalf("create with a missing image succeeded: %+v", ins)
		}
		if !provisioner.IsPermanent(err) {
			t.Errorf("error is not permanent (the host would retry it): %v", err)
		}
		for _, want := range []string{`"conveyor-agent:missing"`, "never pulls", eng.Host} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %s", err, want)
			}
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("the refusal took %v: the provisioner retried", d)
		}
	}
	ins, err := p.Provisioner.List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ins) != 0 {
		t.Fatalf("a refused create left %+v", ins)
	}
	// Health is fine: the engine answers, only the image is missing.
	if err := p.Provisioner.Health(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestEngineDown: Health and Create say where the engine should be.
func TestEngineDown(t *testing.T) {
	ctx := ctxT(t)
	eng := &dockertest.Engine{Host: "unix:///nonexistent/docker.sock"}
	p := startPlugin(t, eng, "m1", "p", `image = "x:1"`)
	err := p.Provisioner.Health(ctx)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/docker.sock") {
		t.Fatalf("health with no engine: %v", err)
	}
	_, err = p.Provisioner.Create(ctx, &provisioner.CreateRequest{RequestID: "r", Pool: "p",
		Instances: []*provisioner.InstanceSpec{{Name: "p-1", Bootstrap: provisioner.Bootstrap{Command: []string{"a"}}}}})
	if err == nil || provisioner.IsPermanent(err) {
		t.Fatalf("create with no engine: %v (want a transient error: the engine may come back)", err)
	}
}

func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// recvMsg waits for one decoded frame from conn.
func recvMsg(t *testing.T, ctx context.Context, conn launcher.Conn) wire.Message {
	t.Helper()
	type res struct {
		b   []byte
		err error
	}
	c := make(chan res, 1)
	go func() {
		b, err := conn.Recv()
		c <- res{b, err}
	}()
	select {
	case r := <-c:
		if r.err != nil {
			t.Fatal(r.err)
		}
		_, m, err := wire.Unmarshal(r.b)
		if err != nil {
			t.Fatal(err)
		}
		return m
	case <-ctx.Done():
		t.Fatal(ctx.Err())
		return nil
	}
}

// waitHello waits for the agent's Hello, showing the container's state
// and log when it does not come.
func waitHello(t *testing.T, ctx context.Context, conn launcher.Conn, eng *dockertest.Engine, id string) *wire.Hello {
	t.Helper()
	hctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	type res struct {
		h   *wire.Hello
		err error
	}
	c := make(chan res, 1)
	go func() {
		for {
			b, err := conn.Recv()
			if err != nil {
				c <- res{nil, err}
				return
			}
			if _, m, err := wire.Unmarshal(b); err == nil {
				if h, ok := m.(*wire.Hello); ok {
					c <- res{h, nil}
					return
				}
			}
		}
	}()
	select {
	case r := <-c:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.h
	case <-hctx.Done():
		st := "?"
		if ci, err := eng.Client.ContainerInspect(ctx, id, client.ContainerInspectOptions{}); err == nil && ci.Container.State != nil {
			st = fmt.Sprintf("%s (exit %d) %s", ci.Container.State.Status, ci.Container.State.ExitCode, ci.Container.State.Error)
		}
		t.Fatal(errors.New("no Hello from the agent in its container; container: " + st + "\nengine log:\n" + eng.Log()))
		return nil
	}
}
