// Package report holds the benchmark's results: one row per measurement
// with a column per transport (Kafka, SSH, local process), the raw
// baseline it compares with, its target and a PASS/FAIL verdict, printed as
// an aligned text table and written as markdown with the machine it ran on.
package report

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Verdict is a row's outcome against its target.
type Verdict string

// Verdicts.
const (
	// None: the row has no target.
	None Verdict = ""
	// Pass: the target was reached.
	Pass Verdict = "PASS"
	// Fail: the target was missed.
	Fail Verdict = "FAIL"
	// Missing: the row could not be measured (see its note).
	Missing Verdict = "N/A"
)

// Check turns a condition into a verdict.
func Check(ok bool) Verdict {
	if ok {
		return Pass
	}
	return Fail
}

// Row is one measurement side by side over the transports.
type Row struct {
	// Name says what was measured.
	Name string
	// Kafka, SSH and Local are the figures over each launcher ("" when
	// the row does not apply to it).
	Kafka, SSH, Local string
	// Baseline is the raw figure the row compares with (kcat, ssh cat,
	// no plugin), with what it is.
	Baseline string
	// Target is the goal, in words ("p50 < 5 ms").
	Target string
	// Verdict is the outcome against Target.
	Verdict Verdict
}

// Report is a whole run.
type Report struct {
	// Machine is where it ran.
	Machine Machine
	// Command is the command line that produced it.
	Command string
	// Started and Took time the run.
	Started time.Time
	Took    time.Duration
	// Rows are the measurements, in order.
	Rows []Row
	// Notes explain rows: what limited a missed target, what could not be
	// measured and why.
	Notes []string
}

// Add appends a row.
func (r *Report) Add(row Row) { r.Rows = append(r.Rows, row) }

// Note appends a note.
func (r *Report) Note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

var header = []string{"measurement", "kafka", "ssh", "local", "baseline", "target", "result"}

func (row Row) cells() []string {
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	return []string{row.Name, dash(row.Kafka), dash(row.SSH), dash(row.Local), dash(row.Baseline), dash(row.Target), dash(string(row.Verdict))}
}

// Text writes the table aligned for a terminal.
func (r *Report) Text(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, row := range r.Rows {
		fmt.Fprintln(tw, strings.Join(row.cells(), "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for i, n := range r.Notes {
		if _, err := fmt.Fprintf(w, "[%d] %s\n", i+1, n); err != nil {
			return err
		}
	}
	return nil
}

// Markdown renders the report as markdown: the machine, the table, then
// the notes (the generated section of docs/PERFORMANCE.md).
func (r *Report) Markdown() string {
	var b strings.Builder
	b.WriteString("Measured by `make bench` (`bench/cmd/conveyor-bench`); every figure of a row was\n")
	b.WriteString("measured side by side in the same run, so the ratios hold on a noisy machine.\n")
	b.WriteString("This section is generated; the text around it is not.\n\n")
	b.WriteString("### Machine\n\n")
	b.WriteString("| | |\n| --- | --- |\n")
	for _, kv := range r.Machine.pairs() {
		fmt.Fprintf(&b, "| %s | %s |\n", kv[0], escape(kv[1]))
	}
	fmt.Fprintf(&b, "| date | %s |\n", r.Started.UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "| run took | %s |\n", r.Took.Round(time.Second))
	fmt.Fprintf(&b, "| command | `%s` |\n\n", r.Command)
	b.WriteString("### Results\n\n")
	b.WriteString("| " + strings.Join(header, " | ") + " |\n")
	b.WriteString("|" + strings.Repeat(" --- |", len(header)) + "\n")
	for _, row := range r.Rows {
		cells := row.cells()
		for i := range cells {
			cells[i] = escape(cells[i])
		}
		if row.Verdict != None {
			cells[len(cells)-1] = "**" + cells[len(cells)-1] + "**"
		}
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	if len(r.Notes) > 0 {
		b.WriteString("\n### Notes\n\n")
		for i, n := range r.Notes {
			fmt.Fprintf(&b, "%d. %s\n", i+1, n)
		}
	}
	return b.String()
}

// escape keeps a cell inside its markdown table column.
func escape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

// Percentile is the nearest-rank p-th percentile (0 < p <= 100) of ds;
// zero for no samples.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// Latency formats a duration in milliseconds with a precision that fits
// it.
func Latency(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms < 10:
		return fmt.Sprintf("%.2f ms", ms)
	case ms < 100:
		return fmt.Sprintf("%.1f ms", ms)
	default:
		return fmt.Sprintf("%.0f ms", ms)
	}
}

// P50P99 formats the median and the 99th percentile of ds.
func P50P99(ds []time.Duration) string {
	return Latency(Percentile(ds, 50)) + " / " + Latency(Percentile(ds, 99))
}

// MiBps is bytes over d in MiB/s; zero when d is not positive.
func MiBps(bytes int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(bytes) / (1 << 20) / d.Seconds()
}

// Rate formats a throughput in MiB/s.
func Rate(mibps float64) string { return fmt.Sprintf("%.1f MiB/s", mibps) }

// Percent formats a ratio as a percentage.
func Percent(ratio float64) string { return fmt.Sprintf("%.0f%%", ratio*100) }

// Size formats a byte count with a binary unit.
func Size(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<30:
		return fmt.Sprintf("%.4g GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.4g MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.4g KiB", float64(n)/(1<<10))
	default:
		return fmt.Sprintf("%d B", n)
	}
}

// ParseSize reads a byte count: a number with an optional unit B, KiB,
// MiB or GiB (K, M, G, KB, MB and GB are binary too).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.ToUpper(strings.TrimSpace(t[i:]))
	}
	var mult float64
	switch unit {
	case "", "B":
		mult = 1
	case "K", "KB", "KIB":
		mult = 1 << 10
	case "M", "MB", "MIB":
		mult = 1 << 20
	case "G", "GB", "GIB":
		mult = 1 << 30
	default:
		return 0, fmt.Errorf("size %q: unknown unit %q (want B, KiB, MiB or GiB)", s, unit)
	}
	var v float64
	if _, err := fmt.Sscanf(num, "%g", &v); err != nil || num == "" {
		return 0, fmt.Errorf("size %q: not a number", s)
	}
	n := int64(v * mult)
	if n <= 0 {
		return 0, fmt.Errorf("size %q: must be positive", s)
	}
	return n, nil
}
