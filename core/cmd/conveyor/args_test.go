package main

import (
	"flag"
	"io"
	"reflect"
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
