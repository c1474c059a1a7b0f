package e2e

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/sdk/testenv"
)

// screenshot is where TestWebUI keeps its screenshot of a finished build:
// written when missing or with CONVEYOR_UPDATE_SCREENSHOT=1 (so that a
// test run leaves the checkout alone), and always into the test's
// artifact directory (go test -artifacts).
const screenshot = "testdata/ui-build.png"

const uiNodes = `
node "ui-1" {
  launcher = "kafka"
  labels   = ["linux"]
  kafka {}
}
`

// uiJob prints its parameter, colours and a line of HTML, then waits for
// the test's gate file before a burst of output, so the test sees the build
// running in the page before it lets it finish.
func uiJob(gate string) string {
	return `
job "ui-demo" {
  labels = ["linux"]
  param "GREETING" {
    description = "printed by the first step"
  }
  step "greet" {
    run = "echo \"greeting=$GREETING\"; printf '\\033[1;31mred bold\\033[0m plain \\033[38;5;208morange\\033[0m\\n'; echo '<b>bold</b><script>window.pwned=1</script>'"
  }
  step "burst" {
    run = ` + cluster.HCLString("while [ ! -e '"+gate+"' ]; do sleep 0.05; done; seq 1 20000; echo all-done") + `
  }
}
`
}

// TestWebUI drives the web UI in headless Chromium against a real server
// with a Kafka agent: sign in with the token, see the node online and its
// connect command, trigger a build with a parameter from the job's form,
// follow its live log to the end across a restart of the master, and look
// at the transport page.
func TestWebUI(t *testing.T) {
	browser := testenv.Command(t, "chromium", "chromium")
	gate := filepath.Join(t.TempDir(), "gate")
	c := start(t, uiNodes, uiJob(gate))
	secret := c.Secret("ui-1")
	c.StartAgent("ui-1", secret)
	c.WaitOnline("ui-1")
	base := "http://" + c.HTTPAddr

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(browser), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 1000),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.Flag("disable-extensions", true),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	// Every script error or console error of the pages fails the test
	// (a CSP violation is one).
	var mu sync.Mutex
	var problems []string
	messages := chromedp.Console(bctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			// The master's restart makes the page's requests fail meanwhile.
			if (m.IsException() || m.Type == chromedp.ConsoleError) && !strings.Contains(m.Text, "net::ERR_") {
				mu.Lock()
				problems = append(problems, m.String()+" at "+m.URL)
				mu.Unlock()
			}
		}
	}()
	ctx, cancel := context.WithTimeout(bctx, 3*time.Minute)
	defer cancel()
	poll := chromedp.WithPollingTimeout(time.Minute)
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	eval := func(what, js string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](js))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return v
	}

	// A page sends an anonymous browser to the login page.
	do("sign in",
		chromedp.Navigate(base+"/ui/nodes"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), c.Token),
		chromedp.Click(chromedp.ID("login-submit")),
		chromedp.WaitVisible(chromedp.CSS(`#node-ui-1[data-state="online"]`)),
	)
	do("show the connect command",
		chromedp.Click(chromedp.CSS(`[data-connect="ui-1"]`)),
		chromedp.Poll[chromedp.Void](`document.getElementById('connect-cmd').textContent.includes('conveyor-agent')`, poll),
	)
	if cmd := eval("read the connect command", `document.getElementById('connect-cmd').textContent`); !strings.Contains(cmd, "echo "+secret+" > ") ||
		!strings.Contains(cmd, "-name ui-1") || !strings.Contains(cmd, c.KafkaAddr) {
		t.Errorf("connect command %q lacks the secret, the node or the broker", cmd)
	}

	do("trigger a build with a parameter",
		chromedp.Navigate(base+"/ui/jobs/ui-demo"),
		chromedp.WaitVisible(chromedp.ID("param-GREETING")),
		chromedp.SendKeys(chromedp.ID("param-GREETING"), "hello-from-the-browser"),
		chromedp.Click(chromedp.ID("trigger-submit")),
		chromedp.WaitVisible(chromedp.ID("log")),
	)
	// The first step's output streams in while the build waits for the
	// gate: the page shows a live log of a running build.
	do("see the live log of the running build",
		chromedp.Poll[chromedp.Void](`document.getElementById('log').textContent.includes('window.pwned=1')`, poll),
		chromedp.Poll[chromedp.Void](`document.querySelector('[data-build-status]').dataset.buildStatus === 'running'`, poll),
	)
	// The master dies under the page and comes back: the stream drops, the
	// page resumes it from its offset (the session survives the restart)
	// and the re-attached build goes on.
	c.KillServer()
	c.StartServer()
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	do("follow the log to the end", chromedp.WaitVisible(chromedp.ID("log-end")))

	type logView struct {
		Text, End, Status, Orange string
		Bold, Script, Pwned, Red  bool
		Resumes, Outputs          int
	}
	got, err := chromedp.Run(ctx, chromedp.Evaluate[logView](`(() => {
		const log = document.getElementById('log');
		const orange = [...log.querySelectorAll('span')].find(s => s.textContent === 'orange');
		return {
			Text: log.textContent,
			End: document.getElementById('log-end').textContent,
			Status: document.querySelector('[data-build-status]').dataset.buildStatus,
			Orange: orange ? orange.style.color : '',
			Bold: log.querySelector('b') !== null,
			Script: log.querySelector('script') !== null,
			Pwned: typeof window.pwned !== 'undefined',
			Red: [...log.querySelectorAll('span.ansi-fg-1.ansi-bold')].some(s => s.textContent === 'red bold'),
			Resumes: +(log.dataset.resumes || 0),
			Outputs: document.querySelectorAll('#build-steps a[href*="/log?offset="]').length,
		};
	})()`))
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != "success" || got.End != "Build finished: success" {
		t.Errorf("final status %q, %q; want success", got.Status, got.End)
	}
	if !strings.Contains(got.Text, "greeting=hello-from-the-browser\n") {
		t.Errorf("the log lacks the parameter: %.300q", got.Text)
	}
	if !strings.Contains(got.Text, "\n<b>bold</b><script>window.pwned=1</script>\n") || got.Bold || got.Script || got.Pwned {
		t.Errorf("the HTML line was not shown as text: bold element %v, script element %v, script ran %v", got.Bold, got.Script, got.Pwned)
	}
	if !got.Red || got.Orange != "rgb(255, 135, 0)" || strings.Contains(got.Text, "\x1b") || strings.Contains(got.Text, "[0m") {
		t.Errorf("colours: red bold span %v, orange %q, escapes in the text %v", got.Red, got.Orange, strings.Contains(got.Text, "[0m"))
	}
	if got.Outputs != 2 {
		t.Errorf("%d steps link to their output, want 2", got.Outputs)
	}
	if got.Resumes < 1 {
		t.Errorf("the page never resumed its log stream across the master's restart")
	}
	// The log arrived whole, in order, once, across the restart.
	if n := strings.Count(got.Text, "greeting="); n != 1 {
		t.Errorf("the first line shows %d times", n)
	}
	var seq strings.Builder
	for i := 1; i <= 20000; i++ {
		seq.WriteString(strconv.Itoa(i) + "\n")
	}
	if !strings.HasSuffix(got.Text, "\n"+seq.String()+"all-done\n") || strings.Count(got.Text, "\n") != 3+20000+1 {
		t.Errorf("the log's burst is not whole: %d lines, ends %q", strings.Count(got.Text, "\n"), got.Text[max(0, len(got.Text)-80):])
	}
	// The colour parser gives the same output for a text however its
	// chunks split it, escape sequences included.
	if res := eval("split escapes", `(() => {
		const s = 'a\x1b[1;31mred\x1b[0m b \x1b[38;2;1;2;3mrgb\x1b[39;48;5;17mbg\x1b[m\x1b]0;title\x07c\x1b[2Kd\x1b[92mbright\x1b[0m\n';
		const parse = chunks => {
			const p = new window.ConveyorLog.AnsiParser(), out = [];
			for (const c of chunks) for (const seg of p.push(c)) {
				const last = out[out.length - 1];
				if (last && last.k === seg.style.key) last.t += seg.text; else out.push({k: seg.style.key, t: seg.text});
			}
			return JSON.stringify(out);
		};
		const want = parse([s]);
		for (let i = 1; i < s.length; i++) {
			const got = parse([s.slice(0, i), s.slice(i)]);
			if (got !== want) return 'split at ' + i + ': ' + got + ' != ' + want;
		}
		return want;
	})()`); strings.HasPrefix(res, "split at") || strings.Contains(res, `\u001b`) || !strings.Contains(res, `"t":"red"`) ||
		!strings.Contains(res, `"t":"rgb"`) || !strings.Contains(res, `"t":"bg"`) || !strings.Contains(res, `"t":"cd"`) || !strings.Contains(res, `{"k":"10||0|0|0|0|0","t":"bright"}`) || strings.Contains(res, "title") {
		t.Errorf("ANSI parser: %s", res)
	}

	eval("scroll the log to its top", `(() => { document.getElementById('log-follow').checked = false; document.getElementById('log').scrollTop = 0; return ''; })()`)
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if img, err := png.Decode(bytes.NewReader(shot)); err != nil || img.Bounds().Dx() < 1000 {
		t.Fatalf("screenshot: %v", err)
	}
	if err := os.WriteFile(filepath.Join(t.ArtifactDir(), "ui-build.png"), shot, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(screenshot); os.IsNotExist(err) || os.Getenv("CONVEYOR_UPDATE_SCREENSHOT") == "1" {
		if err := os.MkdirAll(filepath.Dir(screenshot), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(screenshot, shot, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// The node page: drain with a reason through its form (CSRF), see it
	// drained and in its history, bring it back online.
	do("drain the node from its page",
		chromedp.Navigate(base+"/ui/nodes"),
		chromedp.Click(chromedp.CSS(`#node-ui-1 a[href="/ui/nodes/ui-1"]`)),
		chromedp.WaitVisible(chromedp.ID("drain-form")),
		chromedp.SendKeys(chromedp.ID("drain-reason"), "ui maintenance"),
		chromedp.Click(chromedp.ID("node-drain-button")),
		chromedp.WaitVisible(chromedp.ID("node-drain")),
		chromedp.WaitVisible(chromedp.CSS(`#node-history tr[data-action="drain"]`)),
	)
	if got := eval("the drain", `document.getElementById('node-drain').textContent`); !strings.Contains(got, "ui maintenance") || !strings.Contains(got, "bootstrap") {
		t.Errorf("the drained node says %q, want the reason and who drained it", got)
	}
	if n := c.Node("ui-1"); n.Drain == nil || n.Drain.Reason != "ui maintenance" {
		t.Errorf("the API shows the drain as %+v", n.Drain)
	}
	do("see it drained among the nodes",
		chromedp.Navigate(base+"/ui/nodes"),
		chromedp.WaitVisible(chromedp.CSS(`#node-ui-1 .badge`)),
		chromedp.Navigate(base+"/ui/nodes/ui-1"),
		chromedp.WaitVisible(chromedp.ID("online-form")),
		chromedp.Click(chromedp.ID("node-online")),
		chromedp.WaitVisible(chromedp.CSS(`#node-history tr[data-action="online"]`)),
		chromedp.WaitVisible(chromedp.ID("drain-form")),
	)
	if n := c.Node("ui-1"); n.Drain != nil {
		t.Errorf("the node is still drained after bringing it back: %+v", n.Drain)
	}
	if got := eval("the controls", `['launch-form','disconnect-form'].filter(id => !document.getElementById(id)).join(',')`); got != "" {
		t.Errorf("the node page lacks %s", got)
	}

	// A reload's outcome shows on the nodes page.
	c.WriteConfig(uiNodes, uiJob(gate)+`
job "ui-added" {
  labels = ["linux"]
  step "s" { run = "true" }
}`)
	if res, err := c.API.Reload(context.Background(), false); err != nil || !res.OK {
		t.Fatalf("reload: %+v, %v", res, err)
	}
	do("see the reload's outcome",
		chromedp.Navigate(base+"/ui/nodes"),
		chromedp.WaitVisible(chromedp.CSS(`#reload[data-ok="true"]`)),
	)
	if banner := eval("reload banner", `document.getElementById('reload').textContent`); !strings.Contains(banner, "Configuration reloaded") ||
		!strings.Contains(banner, "job added: ui-added") {
		t.Errorf("reload banner: %s", strings.Join(strings.Fields(banner), " "))
	}

	do("see the transport",
		chromedp.Navigate(base+"/ui/transport"),
		chromedp.WaitVisible(chromedp.CSS(`#transport-ui-1[data-state="online"]`)),
	)
	row := eval("transport row", `document.getElementById('transport-ui-1').textContent + document.getElementById('transport-ui-1').nextElementSibling.textContent`)
	for _, want := range []string{"kafka " + c.KafkaAddr, "ui-1.commands", "ui-1.events", "master → agent", "agent → master"} {
		if !strings.Contains(row, want) {
			t.Errorf("transport row lacks %q: %s", want, strings.Join(strings.Fields(row), " "))
		}
	}
	if !regexp.MustCompile(`\b[1-9][0-9]* / [1-9][0-9]*\b`).MatchString(row) {
		t.Errorf("transport row counts no frames both ways: %s", strings.Join(strings.Fields(row), " "))
	}

	// Signing out in one tab ends the session of the other, which says so.
	other, closeOther := chromedp.NewContext(bctx)
	defer closeOther()
	otherCtx, cancelOther := context.WithTimeout(other, time.Minute)
	defer cancelOther()
	if err := chromedp.Do(otherCtx, chromedp.Navigate(base+"/ui/transport"), chromedp.WaitVisible(chromedp.ID("transport-ui-1"))); err != nil {
		t.Fatalf("second tab: %v", err)
	}
	do("sign out", chromedp.Click(chromedp.ID("logout")), chromedp.WaitVisible(chromedp.ID("token")))
	if err := chromedp.Do(otherCtx, chromedp.WaitVisible(chromedp.ID("signed-out"))); err != nil {
		t.Errorf("the second tab does not say its session ended: %v", err)
	}
	if log := c.ServerLog(); strings.Contains(log, c.Token) || strings.Contains(log, secret) {
		t.Errorf("the server log holds the API token or the node's secret")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Errorf("browser console: %s", p)
	}
}
