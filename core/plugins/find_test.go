package plugins

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFind(t *testing.T) {
	const name = "findme"
	bin := BinaryPrefix + name

	// Each case lays out a plugin_dir and a one-directory PATH.
	type layout struct {
		pluginDir, pathDir string
	}
	executable := func(dir string) {
		if err := os.WriteFile(filepath.Join(dir, bin), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	plainFile := func(dir string) {
		if err := os.WriteFile(filepath.Join(dir, bin), []byte("#!/bin/sh\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	directory := func(dir string) {
		if err := os.Mkdir(filepath.Join(dir, bin), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	nothing := func(string) {}

	tests := []struct {
		name        string
		inPluginDir func(dir string)
		onPath      func(dir string)
		noPluginDir bool                // call Find with an empty plugin_dir
		want        func(layout) string // "" when not found
	}{
		{
			name:        "in plugin_dir",
			inPluginDir: executable, onPath: nothing,
			want: func(l layout) string { return filepath.Join(l.pluginDir, bin) },
		},
		{
			name:        "plugin_dir before PATH",
			inPluginDir: executable, onPath: executable,
			want: func(l layout) string { return filepath.Join(l.pluginDir, bin) },
		},
		{
			name:        "on PATH without plugin_dir",
			inPluginDir: nothing, onPath: executable, noPluginDir: true,
			want: func(l layout) string { return filepath.Join(l.pathDir, bin) },
		},
		{
			name:        "on PATH when plugin_dir lacks it",
			inPluginDir: nothing, onPath: executable,
			want: func(l layout) string { return filepath.Join(l.pathDir, bin) },
		},
		{
			name:        "non-executable file in plugin_dir skipped",
			inPluginDir: plainFile, onPath: executable,
			want: func(l layout) string { return filepath.Join(l.pathDir, bin) },
		},
		{
			name:        "directory in plugin_dir skipped",
			inPluginDir: directory, onPath: executable,
			want: func(l layout) string { return filepath.Join(l.pathDir, bin) },
		},
		{
			name:        "non-executable everywhere",
			inPluginDir: plainFile, onPath: plainFile,
			want: func(layout) string { return "" },
		},
		{
			name:        "nowhere",
			inPluginDir: nothing, onPath: nothing,
			want: func(layout) string { return "" },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := layout{pluginDir: t.TempDir(), pathDir: t.TempDir()}
			tt.inPluginDir(l.pluginDir)
			tt.onPath(l.pathDir)
			t.Setenv("PATH", l.pathDir)
			pluginDir := l.pluginDir
			if tt.noPluginDir {
				pluginDir = ""
			}

			got, err := Find(name, pluginDir)
			want := tt.want(l)
			if want != "" {
				if err != nil {
					t.Fatalf("Find: %v, want %s", err, want)
				}
				if got != want {
					t.Fatalf("Find = %s, want %s", got, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Find = %s, want an error", got)
			}
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("error %q does not wrap ErrNotFound", err)
			}
			// The error names the binary and every place searched.
			exe, xerr := os.Executable()
			if xerr != nil {
				t.Fatal(xerr)
			}
			if resolved, rerr := filepath.EvalSymlinks(exe); rerr == nil {
				exe = resolved
			}
			for _, s := range []string{bin, l.pluginDir, filepath.Dir(exe), "$PATH"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}
