package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseArgsInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		pos     []string
		purge   bool
		address string
		wantErr bool
	}{
		{args: []string{"n1"}, pos: []string{"n1"}},
		{args: []string{"n1", "--purge"}, pos: []string{"n1"}, purge: true},
		{args: []string{"-purge", "n1"}, pos: []string{"n1"}, purge: true},
		{args: []string{"n1", "-address", "http://x", "n2"}, pos: []string{"n1", "n2"}, address: "http://x"},
		{args: []string{"n1", "--", "-purge"}, pos: []string{"n1", "-purge"}},
		{args: []string{"n1", "-bogus"}, wantErr: true},
		{args: nil, pos: nil},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		purge := fs.Bool("purge", false, "")
		addr := fs.String("address", "", "")
		pos, err := parseArgs(fs, tc.args)
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: err = %v, want error %v", tc.args, err, tc.wantErr)
			continue
		}
		if tc.wantErr {
			continue
		}
		if !reflect.DeepEqual(pos, tc.pos) || *purge != tc.purge || *addr != tc.address {
			t.Errorf("%q: pos %q purge %v address %q; want %q %v %q", tc.args, pos, *purge, *addr, tc.pos, tc.purge, tc.address)
		}
	}
}

func TestResolveToken(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "api-token")
	if err := os.WriteFile(file, []byte("  from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name                                   string
		flagToken, flagFile, envToken, envFile string
		want                                   string
		wantErr                                string
	}{
		{name: "nothing"},
		{name: "flag", flagToken: "f", envToken: "e", envFile: file, want: "f"},
		{name: "flag file", flagFile: file, envToken: "e", want: "from-file"},
		{name: "env", envToken: "e", envFile: empty, want: "e"},
		{name: "env file", envFile: file, want: "from-file"},
		{name: "both flags", flagToken: "f", flagFile: file, wantErr: "exclusive"},
		{name: "empty file", flagFile: empty, wantErr: "is empty"},
		{name: "missing file", envFile: filepath.Join(dir, "nope"), wantErr: "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolveToken(tc.flagToken, tc.flagFile, tc.envToken, tc.envFile)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
