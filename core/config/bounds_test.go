package config

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// loadDeadline bounds one Load in these tests: each attack used to hang,
// crash or fill the memory; now each is refused at once.
const loadDeadline = 30 * time.Second

// loadWithin runs Load(path) and fails the test when it does not return
// within loadDeadline (a FIFO used to block it for good).
func loadWithin(t *testing.T, path string) (*Config, hcl.Diagnostics) {
	t.Helper()
	type result struct {
		c     *Config
		diags hcl.Diagnostics
	}
	done := make(chan result, 1)
	go func() {
		c, diags := Load(path)
		done <- result{c, diags}
	}()
	select {
	case r := <-done:
		return r.c, r.diags
	case <-time.After(loadDeadline):
		t.Fatalf("Load(%s) did not return within %v", path, loadDeadline)
		return nil, nil
	}
}

// copyAttack copies testdata/attack/name into dir and returns its path.
func copyAttack(t *testing.T, dir, name string) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("testdata", "attack", name))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	writeFile(t, p, string(src))
	return p
}

// writeDiags renders diags as `conveyor validate` prints them.
func writeDiags(t *testing.T, c *Config, diags hcl.Diagnostics) string {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteDiagnostics(&buf, c.Files, diags); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestLoadBoundedInput loads each malicious configuration of
// testdata/attack (and the huge ones, generated here): each gets an error
// at FILE:LINE:COL saying what is wrong, promptly, instead of a stack
// overflow, a hang or a process growing until the OOM killer ends it.
func TestLoadBoundedInput(t *testing.T) {
	tests := []struct {
		name string
		// setup prepares dir and returns the path to load.
		setup func(t *testing.T, dir string) string
		pos   string // LINE:COL of the first error
		text  string // part of its summary or detail
	}{
		{"deep_brackets", attack("deep_brackets.hcl"), "8:75", "nest more than 64 levels deep"},
		{"60000_brackets", generated("a = " + strings.Repeat("[", 60000)), "1:69", "Configuration nested too deeply"},
		{"60000_braces", generated("a = " + strings.Repeat("{a=", 60000)), "1:", "Configuration nested too deeply"},
		{"60000_parens", generated("a = " + strings.Repeat("(", 60000)), "1:69", "Configuration nested too deeply"},
		{"60000_templates", generated("a = " + strings.Repeat(`"${`, 60000)), "1:", "Configuration nested too deeply"},
		{"60000_blocks", generated(strings.Repeat("b {\n", 60000)), "65:3", "Configuration nested too deeply"},
		{"unary_chain", generated("a = " + strings.Repeat("!", 200000) + "true\n"), "1:261", "Expression too long"},
		{"ternary_chain", generated("a = " + strings.Repeat("true ? 1 : ", 50000) + "1\n"), "1:", "Expression too long"},
		{"binary_chain", generated("a = 1" + strings.Repeat("+1", 10000) + "\n"), "1:518", "Expression too long"},
		{"index_chain", generated(`a = {}` + strings.Repeat(`[upper("a")]`, 50000) + "\n"), "1:", "Expression too long"},
		{"long_chain", attack("long_chain.hcl"), "8:", "chains more than 256 operators"},
		{"for_bomb", attack("for_bomb.hcl"), "9:12", "Iteration is not supported"},
		{"template_for", attack("template_for.hcl"), "10:7", "Iteration is not supported"},
		{"config_too_large", generated("# " + strings.Repeat("x", MaxConfigFileBytes)), "1:1", "larger than the limit of 1 MiB"},
		{"config_fifo", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "fifo.hcl")
			if err := syscall.Mkfifo(p, 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}, "1:1", "not a regular file (a FIFO)"},
		{"config_dev_zero", func(*testing.T, string) string { return "/dev/zero" }, "1:1", "not a regular file (a character device)"},
		{"file_dev_zero", attack("file_dev_zero.hcl"), "10:19", "cannot read /dev/zero: not a regular file (a character device)"},
		{"file_fifo", func(t *testing.T, dir string) string {
			if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
				t.Fatal(err)
			}
			return copyAttack(t, dir, "file_fifo.hcl")
		}, "10:", "fifo: not a regular file (a FIFO)"},
		{"file_too_large", func(t *testing.T, dir string) string {
			writeFile(t, filepath.Join(dir, "big.txt"), strings.Repeat("x", MaxFileFuncBytes+1))
			return copyAttack(t, dir, "file_too_large.hcl")
		}, "10:", "larger than the limit of 16 MiB"},
		{"file_amplified", func(t *testing.T, dir string) string {
			// 80 copies of a 1 MiB file in one template: 80 MiB.
			writeFile(t, filepath.Join(dir, "mib.txt"), strings.Repeat("x", 1<<20))
			return write(t, dir, jobRunning("\""+strings.Repeat(`${file("mib.txt")}`, 80)+"\""))
		}, "4:", "would return more than 64 MiB in all"},
		{"join_amplified", func(t *testing.T, dir string) string {
			// A 256 KiB separator between 500 items: 125 MiB.
			sep := strings.Repeat("s", 256<<10)
			return write(t, dir, jobRunning("join(\""+sep+"\", ["+strings.Repeat(`"",`, 500)+"])"))
		}, "4:", "would return more than 64 MiB in all"},
		{"30000_labels", generated("job \"j\" {\n  labels = [" + strings.Repeat(`"l",`, 30000) + "]\n}\n"), "2:", "holds at most 512 items"},
		{"30000_entries", generated("job \"j\" {\n  env = {\n" + strings.Repeat("A = \"x\"\n", 30000) + "}\n}\n"), "", "holds at most 512 items"},
		{"http_port", attack("http_port.hcl"), "2:15", `The port "99999" of the HTTP address "127.0.0.1:99999" is not a TCP port number`},
		{"executors", attack("executors.hcl"), "5:15", "between 1 and 1024 executors"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := tt.setup(t, dir)
			c, diags := loadWithin(t, path)
			if !diags.HasErrors() {
				t.Fatalf("no error")
			}
			first := diags[0]
			for _, d := range diags {
				if d.Severity == hcl.DiagError && d.Subject != nil {
					first = d
					break
				}
			}
			if first.Subject == nil {
				t.Fatalf("first error %q: %s has no position", first.Summary, first.Detail)
			}
			at := first.Subject.Filename + ":" + strings.TrimPrefix(
				strings.Join([]string{itoa(first.Subject.Start.Line), itoa(first.Subject.Start.Column)}, ":"), "")
			if want := path + ":" + tt.pos; !strings.HasPrefix(at, want) {
				t.Errorf("first error at %s, want %s...", at, want)
			}
			if !strings.Contains(first.Summary+": "+first.Detail, tt.text) {
				t.Errorf("first error %q: %q does not contain %q", first.Summary, first.Detail, tt.text)
			}
			if out := writeDiags(t, c, diags); !strings.Contains(out, at+": Error: "+first.Summary) {
				t.Errorf("printed diagnostics lack %q:\n%.2000s", at+": Error: "+first.Summary, out)
			}
		})
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// attack returns a setup loading testdata/attack/name from a copy (file()
// paths resolve next to it).
func attack(name string) func(*testing.T, string) string {
	return func(t *testing.T, dir string) string {
		for _, extra := range []string{"shadow", "tok"} {
			copyAttack(t, dir, extra)
		}
		return copyAttack(t, dir, name)
	}
}

// generated returns a setup writing src, too large to commit, as the
// configuration file.
func generated(src string) func(*testing.T, string) string {
	return func(t *testing.T, dir string) string { return write(t, dir, src) }
}

// jobRunning is a configuration whose one step runs expr (on line 4,
// column 11).
func jobRunning(expr string) string {
	return "launcher \"local\" {}\nnode \"n1\" { launcher = \"local\" }\njob \"j\" {\n  step \"s\" { run = " + expr + " }\n}\n"
}

// write writes src as dir/config.hcl.
func write(t *testing.T, dir, src string) string {
	t.Helper()
	p := filepath.Join(dir, "config.hcl")
	writeFile(t, p, src)
	return p
}

// TestCheckShapeLimits pins the bounds: MaxNesting levels and MaxOperators
// operators pass, one more does not; ordinary nesting and long flat lists
// pass.
func TestCheckShapeLimits(t *testing.T) {
	nest := func(n int) string { return "a = " + strings.Repeat("[", n) + strings.Repeat("]", n) + "\n" }
	chain := func(n int) string { return "a = 1" + strings.Repeat("+1", n) + "\n" }
	tests := []struct {
		src string
		ok  bool
	}{
		{nest(MaxNesting), true},
		{nest(MaxNesting + 1), false},
		{chain(MaxOperators), true},
		{chain(MaxOperators + 1), false},
		{"a = [" + strings.Repeat("1 + 1,\n", MaxItems-1) + "]\n", true},
		{strings.Repeat("a = 1 + 1 # note\n", 10000), true},
		{"job \"j\" {\n  for = 1\n  env = { for = \"x\" }\n}\n", true},
		{"a = [for x in [1] : x]\n", false},
		{"a = {for k, v in {} : k => v}\n", false},
		{"a = \"%{ for x in [1] }x%{ endfor }\"\n", false},
		{"a = \"%{ if true }x%{ endif }\"\n", true},
		{"a = [" + strings.Repeat("1,", MaxItems-1) + "]\n", true},
		{"a = [" + strings.Repeat("1,", MaxItems) + "]\n", false},
		{"a = {\n" + strings.Repeat("k = 1\n\n", MaxItems-1) + "}\n", true},
		{"a = {\n" + strings.Repeat("k = 1\n", MaxItems) + "}\n", false},
		{strings.Repeat("node \"n\" {\n  launcher = \"l\"\n}\n", 10*MaxItems), true},
	}
	for _, tt := range tests {
		diags := checkShape([]byte(tt.src), "x.hcl")
		if diags.HasErrors() == tt.ok {
			t.Errorf("checkShape(%.60q...) = %v, want ok %v", tt.src, diags, tt.ok)
		}
	}
}

// TestDiagnosticsNameTheSource: a value from file() or env(), or any value
// computed from one (through a function, an interpolation, a condition),
// is never quoted in a diagnostic, whichever check rejects it, whole or in
// part or transformed; the diagnostic names the call instead. (file("/etc/shadow")
// used as a timeout printed the file in "Invalid timeout"; then
// upper("x${file("tok")}") printed the token in upper case, and
// "1${trimspace(file("tok"))}" printed part of it in time.ParseDuration's
// `unknown unit`.)
func TestDiagnosticsNameTheSource(t *testing.T) {
	const secret = "attackerShouldNeverSeeThis"
	t.Setenv("CONVEYOR_TEST_SECRET", "envSecretNeverShown")
	tests := []struct {
		file string
		want []string // in the printed diagnostics
	}{
		{"secret_timeout.hcl", []string{`Invalid timeout`, `The timeout is not a duration such as`, `The value comes from file("shadow")`}},
		{"secret_labels.hcl", []string{`No node carries all of the labels that job "j" requires`, `The value comes from file("shadow")`}},
		{"secret_env.hcl", []string{
			`The log level is not one of trace, debug, info, warn, error. The value comes from env("CONVEYOR_TEST_SECRET")`,
			`The HTTP address is not a host:port pair. The value comes from env("CONVEYOR_TEST_SECRET")`,
			`The timeout is not a duration such as "90s", "30m" or "1h30m". The value comes from env("CONVEYOR_TEST_SECRET")`,
		}},
		{"secret_upper.hcl", []string{`8:13: Error: Invalid timeout`, `The timeout is not a duration such as "90s", "30m" or "1h30m". The value comes from file("tok")`}},
		{"secret_unit.hcl", []string{`8:13: Error: Invalid timeout`, `The timeout is not a duration such as "90s", "30m" or "1h30m". The value comes from file("tok")`}},
		// A check placed on another attribute (the default) quoting the
		// derived value (a choice): the second net knows every string
		// computed from file().
		{"secret_choices.hcl", []string{`9:15: Error:`, `(value from file("tok"))`}},
		{"secret_derived.hcl", []string{
			`2:15: Error: Invalid log_level`, `The log level is not one of`,
			`3:15: Error: Invalid http_addr`, `The port of the HTTP address is not a TCP port number`,
			`10:23: Error: Invalid heartbeat_timeout`,
			`11:23: Error: Invalid session_timeout`, `The session_timeout is not a duration`,
			`15:14: Error: Undeclared launcher`, `The node "n2" uses a launcher that has no launcher block.`,
			`19:15: Error: Job cannot run on any node`,
			`20:16: Error: Invalid artifacts`, `The artifacts pattern cannot be used.`,
			`21:15: Error: Invalid timeout`,
			`The value comes from file("tok"); diagnostics never show it.`,
		}},
	}
	tok, err := os.ReadFile("testdata/attack/tok")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(strings.TrimSuffix(tt.file, ".hcl"), func(t *testing.T) {
			dir := t.TempDir()
			c, diags := loadWithin(t, attack(tt.file)(t, dir))
			out := writeDiags(t, c, diags)
			for _, leak := range []string{secret, "Zq4MvTfH", "envSecretNeverShown", "ENVSECRETNEVERSHOWN"} {
				if strings.Contains(out, leak) {
					t.Errorf("diagnostics quote %q:\n%s", leak, out)
				}
			}
			// No four characters of the token, in any case (the
			// directory's name, random digits, aside).
			lower := strings.ToLower(strings.ReplaceAll(out, dir, "DIR"))
			if part := sharedPart(lower, strings.ToLower(strings.TrimSpace(string(tok))), 4); part != "" {
				t.Errorf("diagnostics quote %q of the token:\n%s", part, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("diagnostics lack %q:\n%s", w, out)
				}
			}
		})
	}
}

// sharedPart returns a substring of secret of n bytes found in s, or "".
func sharedPart(s, secret string, n int) string {
	for i := 0; i+n <= len(secret); i++ {
		if strings.Contains(s, secret[i:i+n]) {
			return secret[i : i+n]
		}
	}
	return ""
}

// TestRedactPluginMessages: what a plugin says about a value (through
// hcldec or its own checks, in any quoting) is redacted the same way.
func TestRedactPluginMessages(t *testing.T) {
	st := &evalState{}
	st.remember("line one of the secret\nline two of the secret\n", `file("key")`)
	st.remember("tok3n", `env("TOKEN")`)
	st.remember("ab", `env("SHORT")`)
	const key = `(value from file("key"))`
	tests := []struct{ in, want string }{
		{`launch_timeout: "line one of the secret\nline two of the secret\n" is not a duration`, "launch_timeout: " + key + " is not a duration"},
		{`time: invalid duration "line one of the secret\x0aline two of the secret\x0a"`, "time: invalid duration " + key},
		{"cannot parse: line two of the secret", "cannot parse: " + key},
		{"token tok3n refused; tok3ns are fine", `token (value from env("TOKEN")) refused; tok3ns are fine`},
		{"address line two of the secrets:80", "address " + key + "s:80"},
		{`user "ab" unknown; about ab`, `user (value from env("SHORT")) unknown; about ab`},
	}
	for _, tt := range tests {
		d := st.redact(hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "x", Detail: tt.in}})
		if d[0].Detail != tt.want {
			t.Errorf("redact(%q) = %q, want %q", tt.in, d[0].Detail, tt.want)
		}
	}
}

// TestLoadContextInterrupted: a load whose context has ended (SIGTERM in
// conveyor validate) returns at once with an "Interrupted" error.
func TestLoadContextInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c, diags := LoadContext(ctx, "testdata/good.hcl")
	if c == nil || c.Files == nil || !diags.HasErrors() || diags[0].Summary != "Interrupted" {
		t.Fatalf("LoadContext with an ended context = %v, %v; want an Interrupted error", c, diags)
	}
}

// TestNoCascadeAfterFunctionError: a file() that fails is reported once,
// not also as an invalid value of its attribute.
func TestNoCascadeAfterFunctionError(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := write(t, dir, "launcher \"local\" {}\nnode \"n1\" { launcher = \"local\" }\njob \"j\" {\n  timeout = file(\"fifo\")\n  step \"s\" { run = \"true\" }\n}\n")
	_, diags := loadWithin(t, p)
	if len(diags) != 1 || diags[0].Summary != "Invalid function argument" {
		t.Errorf("diags = %v, want only the file() error", diags)
	}
}
