package config

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/zclconf/go-cty/cty"
)

// loadText loads the configuration file name of dir holding src and
// decodes its plugin blocks as the local launcher's and an empty one's.
func loadText(t *testing.T, dir, name, src string) *Config {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	c, diags := Load(path)
	requireNoDiags(t, c.Files, diags)
	local := PluginSpec{
		Global: &hcldec.ObjectSpec{"shell": &hcldec.AttrSpec{Name: "shell", Type: cty.String}},
		Node:   &hcldec.ObjectSpec{"command": &hcldec.AttrSpec{Name: "command", Type: cty.List(cty.String)}},
	}
	empty := PluginSpec{Global: &hcldec.ObjectSpec{}, Node: &hcldec.ObjectSpec{}}
	diags = c.DecodePlugins(map[string]PluginSpec{"local": local, "gone": empty, "fresh": empty})
	requireNoDiags(t, c.Files, diags)
	return c
}

const diffBase = `
server { http_addr = "127.0.0.1:0" }
launcher "local" { shell = "/bin/sh" }
launcher "gone" {}
node "same" {
  launcher = "local"
  local { command = ["a"] }
}
node "relabelled" {
  launcher = "local"
  labels   = ["x"]
}
node "moved" {
  launcher = "local"
  local { command = ["a"] }
}
node "slower" {
  launcher = "local"
}
node "old" {
  launcher = "gone"
}
node "sometimes" {
  launcher = "local"
}
job "kept" {
  step "s" { run = "true" }
}
job "edited" {
  step "s" { run = "true" }
}
job "dropped" {
  step "s" { run = "true" }
}
`

const diffNext = `
server { http_addr = "127.0.0.1:1" }
launcher "local" { shell = "/bin/bash" }
launcher "fresh" {}
node "same" {
  launcher = "local"

  # reformatted, same settings
  local {
    command = [ "a" ]
  }
}
node "relabelled" {
  launcher  = "local"
  labels    = ["x", "y"]
  executors = 2
  shell     = ["bash", "-c"]
}
node "moved" {
  launcher = "local"
  local { command = ["b"] }
}
node "slower" {
  launcher          = "local"
  heartbeat_timeout = "1m"
}
node "new" {
  launcher = "fresh"
}
node "sometimes" {
  launcher = "local"
  availability {
    mode         = "on_demand"
    idle_timeout = "5m"
  }
}
job "kept" {

  step "s" { run = "true" }
}
job "edited" {
  step "s" { run = "false" }
}
job "added" {
  step "s" { run = "true" }
}
`

// TestCompare: each kind of change lands in its list; reformatting
// (moved blocks, whitespace) is no change.
func TestCompare(t *testing.T) {
	dir := t.TempDir()
	old, next := loadText(t, dir, "old.hcl", diffBase), loadText(t, dir, "next.hcl", diffNext)
	got := Compare(old, next)
	want := &Diff{
		JobsAdded: []string{"added"}, JobsChanged: []string{"edited"}, JobsRemoved: []string{"dropped"},
		NodesAdded: []string{"new"}, NodesRemoved: []string{"old"},
		NodesRelaunched: []string{"moved", "slower", "sometimes"}, NodesUpdated: []string{"relabelled"},
		LaunchersAdded: []string{"fresh"}, LaunchersChanged: []string{"local"}, LaunchersRemoved: []string{"gone"},
		NeedsRestart: []string{"server.http_addr"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Compare =\n%+v\nwant\n%+v", got, want)
	}
	if d := Compare(old, loadText(t, dir, "again.hcl", diffBase)); !d.Empty() {
		t.Fatalf("the same configuration loaded again differs: %+v", d)
	}
}
