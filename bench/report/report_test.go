package report

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(xs ...int) []time.Duration {
		var ds []time.Duration
		for _, x := range xs {
			ds = append(ds, time.Duration(x)*time.Millisecond)
		}
		return ds
	}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(100-i) * time.Millisecond // unsorted on purpose
	}
	tests := []struct {
		name string
		ds   []time.Duration
		p    float64
		want time.Duration
	}{
		{"none", nil, 50, 0},
		{"one", ms(7), 99, 7 * time.Millisecond},
		{"median of odd", ms(3, 1, 2), 50, 2 * time.Millisecond},
		{"median of even is the lower", ms(4, 1, 3, 2), 50, 2 * time.Millisecond},
		{"p99 of 100", hundred, 99, 99 * time.Millisecond},
		{"p50 of 100", hundred, 50, 50 * time.Millisecond},
		{"p100 is the max", ms(5, 9, 1), 100, 9 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := append([]time.Duration(nil), tt.ds...)
			if got := Percentile(tt.ds, tt.p); got != tt.want {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tt.ds, tt.p, got, tt.want)
			}
			for i := range before {
				if before[i] != tt.ds[i] {
					t.Fatalf("Percentile reordered its input")
				}
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"256MiB", 256 << 20, false},
		{"16 MiB", 16 << 20, false},
		{"1GiB", 1 << 30, false},
		{"1.5k", 1536, false},
		{"4096", 4096, false},
		{"2MB", 2 << 20, false},
		{"0", 0, true},
		{"MiB", 0, true},
		{"3 parsecs", 0, true},
		{"-5MiB", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestFormats(t *testing.T) {
	tests := []struct{ got, want string }{
		{Latency(1500 * time.Microsecond), "1.50 ms"},
		{Latency(42 * time.Millisecond), "42.0 ms"},
		{Latency(1234 * time.Millisecond), "1234 ms"},
		{Size(256 << 20), "256 MiB"},
		{Size(1 << 30), "1 GiB"},
		{Size(24683520 << 10), "23.54 GiB"},
		{Size(100 << 10), "100 KiB"},
		{Size(12), "12 B"},
		{Rate(MiBps(64<<20, 2*time.Second)), "32.0 MiB/s"},
		{Rate(MiBps(1, 0)), "0.0 MiB/s"},
		{Percent(0.8), "80%"},
		{P50P99([]time.Duration{time.Millisecond, 2 * time.Millisecond}), "1.00 ms / 2.00 ms"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func sample() *Report {
	r := &Report{
		Machine: Machine{CPU: "Test CPU", Cores: 2, MemoryBytes: 4 << 30, Kernel: "Linux 6.1", Go: "go1.26.8", Load: "0.1 0.2 0.3 -> 1.0 1.0 1.0"},
		Command: "conveyor-bench -size 16MiB", Started: time.Date(2026, 12, 1, 18, 0, 0, 0, time.UTC), Took: 90 * time.Second,
	}
	r.Add(Row{Name: "step round trip", Kafka: "3.00 ms / 4.00 ms", SSH: "2.00 ms / 3.00 ms", Target: "kafka p50 < 5 ms", Verdict: Check(true)})
	r.Add(Row{Name: "a | pipe", Local: "x", Verdict: Check(false)})
	r.Add(Row{Name: "informational"})
	r.Note("first %s", "note")
	return r
}

func TestMarkdown(t *testing.T) {
	md := sample().Markdown()
	for _, want := range []string{
		"| CPU | Test CPU |", "| cores | 2 |", "| memory | 4 GiB |", "| kernel | Linux 6.1 |", "| Go | go1.26.8 |",
		"| date | 2026-12-01T18:00:00Z |", "| command | `conveyor-bench -size 16MiB` |",
		"| measurement | kafka | ssh | local | baseline | target | result |",
		"| step round trip | 3.00 ms / 4.00 ms | 2.00 ms / 3.00 ms | - | - | kafka p50 < 5 ms | **PASS** |",
		`| a \| pipe | - | - | x | - | - | **FAIL** |`,
		"| informational | - | - | - | - | - | - |",
		"1. first note",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestText(t *testing.T) {
	var b strings.Builder
	if err := sample().Text(&b); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d lines, want header, 3 rows and a note:\n%s", len(lines), b.String())
	}
	col := strings.Index(lines[0], "kafka")
	if col < 0 || strings.Index(lines[1], "3.00 ms") != col {
		t.Errorf("columns not aligned:\n%s", b.String())
	}
	if !strings.HasSuffix(lines[1], "PASS") || !strings.HasSuffix(lines[2], "FAIL") || lines[4] != "[1] first note" {
		t.Errorf("unexpected table:\n%s", b.String())
	}
}

func TestSplice(t *testing.T) {
	gen := "generated v2\n"
	section := BeginMarker + "\ngenerated v2\n" + EndMarker
	tests := []struct {
		name, doc, want string
		wantErr         bool
	}{
		{"new file", "", "# Performance\n\n" + section + "\n", false},
		{"replaces between markers, keeps the analysis", "# P\n\nintro\n" + BeginMarker + "\nold\n" + EndMarker + "\n\n## Analysis\nkept\n",
			"# P\n\nintro\n" + section + "\n\n## Analysis\nkept\n", false},
		{"no markers: appended", "# P\n\nhand written\n", "# P\n\nhand written\n\n" + section + "\n", false},
		{"end before begin", EndMarker + "\n" + BeginMarker, "", true},
		{"begin only", BeginMarker + "\nold", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Splice(tt.doc, gen)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("Splice = %q, %v; want %q (error %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestMachineParsers(t *testing.T) {
	f, err := os.Open("testdata/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := cpuModel(f); got != "AMD EPYC 7B13 64-Core Processor" {
		t.Errorf("cpuModel = %q", got)
	}
	g, err := os.Open("testdata/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if got, err := memTotal(g); err != nil || got != 24683520<<10 {
		t.Errorf("memTotal = %d, %v", got, err)
	}
	if _, err := memTotal(strings.NewReader("MemFree: 1 kB\n")); err == nil {
		t.Error("memTotal without MemTotal: no error")
	}
	if m := ThisMachine(); m.Cores < 1 || m.Go == "" {
		t.Errorf("ThisMachine() = %+v", m)
	}
}
