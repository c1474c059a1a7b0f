package main

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

func TestFillData(t *testing.T) {
	tests := []struct {
		name  string
		size  int64
		lines int
	}{
		{"whole lines", 3 * lineBytes, 3},
		{"a short last line", 2*lineBytes + 100, 3},
		{"one byte", 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := fillData(&b, tt.size, rand.New(rand.NewPCG(1, 2))); err != nil {
				t.Fatal(err)
			}
			if int64(b.Len()) != tt.size {
				t.Fatalf("%d bytes, want %d", b.Len(), tt.size)
			}
			lines := bytes.SplitAfter(b.Bytes(), []byte("\n"))
			if last := lines[len(lines)-1]; len(last) == 0 {
				lines = lines[:len(lines)-1]
			}
			if len(lines) != tt.lines {
				t.Fatalf("%d lines, want %d", len(lines), tt.lines)
			}
			for i, l := range lines {
				if len(l) > lineBytes || l[len(l)-1] != '\n' || bytes.IndexByte(l[:len(l)-1], '\n') >= 0 {
					t.Fatalf("line %d: %d bytes, want at most %d ending in its only newline", i, len(l), lineBytes)
				}
				if i < len(lines)-1 && len(l) != lineBytes {
					t.Fatalf("line %d: %d bytes, want %d", i, len(l), lineBytes)
				}
			}
		})
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr bool
		check   func(o *options) bool
	}{
		{nil, false, func(o *options) bool {
			return o.size == 256<<20 && o.runs == 1000 && o.agents == 1000 && len(o.only) == len(sections)
		}},
		{[]string{"-size", "16MiB", "-runs", "100", "-agents", "100", "-only", "session,scale"}, false, func(o *options) bool {
			return o.size == 16<<20 && o.runs == 100 && o.agents == 100 && len(o.only) == 2
		}},
		{[]string{"-only", "nope"}, true, nil},
		{[]string{"-runs", "0"}, true, nil},
		{[]string{"-size", "lots"}, true, nil},
		{[]string{"extra"}, true, nil},
	}
	for _, tt := range tests {
		o, err := parseFlags(tt.args, &bytes.Buffer{})
		if (err != nil) != tt.wantErr {
			t.Errorf("parseFlags(%q): error %v, want error %v", tt.args, err, tt.wantErr)
			continue
		}
		if err == nil && !tt.check(o) {
			t.Errorf("parseFlags(%q) = %+v", tt.args, o)
		}
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{"/tmp/a b": `'/tmp/a b'`, "it's": `'it'\''s'`} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}
