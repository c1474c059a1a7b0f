package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/conveyor-ci/conveyor/bench/report"
)

// results collects what the sections measured; table turns it into rows.
type results struct {
	errors []string

	stepRTT       map[string][]time.Duration // session section, by transport
	sessionStream map[string][]float64       // MiB/s to the master's session, no store
	hopWith       []float64                  // MiB/s through the local launcher plugin
	hopWithout    []float64                  // MiB/s with no plugin
	buildRTT      map[string][]time.Duration // server section
	stepRecorded  map[string][]time.Duration // the same builds' step as the master recorded it
	stream        map[string][]float64       // MiB/s to the stored log
	streamTime    map[string]time.Duration
	artifact      map[string][]float64 // MiB/s agent -> the master's artifact store
	kcat          []float64            // produce+consume, MiB/s
	kcatProduce   []float64
	sshCat        []float64
	cancel        map[string][]time.Duration
	scale         *scaleResult
}

// Targets of issue 9.
const (
	rttTarget      = 5 * time.Millisecond
	streamTarget   = 0.8
	cancelTarget   = time.Second
	perAgentTarget = 100 << 10
	hopTarget      = 0.10
)

func (b *bench) table() {
	r, rep, size := b.res, b.rep, report.Size(b.opts.size)
	perTransport := func(f func(tr string) string) (k, s, l string) {
		return f("kafka"), f("ssh"), f("local")
	}

	// 1. Step round trip.
	row := report.Row{Name: fmt.Sprintf("step round trip `true`, p50 / p99 of %d: master session RunStep -> Exit", b.opts.runs),
		Target: "kafka p50 < 5 ms", Verdict: report.Missing}
	if len(r.stepRTT["kafka"]) > 0 {
		row.Kafka, row.SSH, row.Local = perTransport(func(tr string) string { return report.P50P99(r.stepRTT[tr]) })
		row.Verdict = report.Check(report.Percentile(r.stepRTT["kafka"], 50) < rttTarget)
	}
	rep.Add(row)
	if len(r.buildRTT["kafka"]) > 0 {
		k, s, l := perTransport(func(tr string) string { return report.P50P99(r.buildRTT[tr]) })
		rep.Add(report.Row{Name: fmt.Sprintf("build round trip `true`, p50 / p99 of %d: HTTP trigger -> build finished (conveyor server)", b.opts.runs), Kafka: k, SSH: s, Local: l})
		k, s, l = perTransport(func(tr string) string { return report.P50P99(r.stepRecorded[tr]) })
		rep.Add(report.Row{Name: "  the same builds' step as the server recorded it (started -> finished)", Kafka: k, SSH: s, Local: l})
	}

	// 2. Output streaming.
	if len(r.stream["kafka"]) > 0 {
		k, s, l := perTransport(func(tr string) string { return report.Rate(median(r.stream[tr])) })
		rep.Add(report.Row{Name: fmt.Sprintf("output streaming: a step prints %s, to the stored log (median of %d)", size, b.opts.rounds), Kafka: k, SSH: s, Local: l,
			Baseline: fmt.Sprintf("kcat %s (produce alone %s); ssh cat %s", report.Rate(median(r.kcat)), report.Rate(median(r.kcatProduce)), report.Rate(median(r.sshCat)))})
		kr := median(r.stream["kafka"]) / median(r.kcat)
		rep.Add(report.Row{Name: "  kafka streaming / kcat produce+consume on the same broker", Kafka: report.Percent(kr),
			Baseline: "kcat " + report.Rate(median(r.kcat)), Target: ">= 80% of kcat", Verdict: report.Check(kr >= streamTarget)})
		sr := median(r.stream["ssh"]) / median(r.sshCat)
		rep.Add(report.Row{Name: "  ssh streaming / `ssh host cat FILE` on the same sshd", SSH: report.Percent(sr),
			Baseline: "ssh cat " + report.Rate(median(r.sshCat)), Target: ">= 80% of ssh cat", Verdict: report.Check(sr >= streamTarget)})
	}
	if len(r.sessionStream["kafka"]) > 0 {
		k, s, l := perTransport(func(tr string) string { return report.Rate(median(r.sessionStream[tr])) })
		row := report.Row{Name: fmt.Sprintf("  the same %s to the master's session, no store (median of %d)", size, b.opts.rounds), Kafka: k, SSH: s, Local: l}
		if len(r.kcat) > 0 {
			row.Kafka += " (" + report.Percent(median(r.sessionStream["kafka"])/median(r.kcat)) + " of kcat)"
			row.SSH += " (" + report.Percent(median(r.sessionStream["ssh"])/median(r.sshCat)) + " of ssh cat)"
		}
		rep.Add(row)
	}
	if len(r.stream["kafka"]) == 0 {
		rep.Add(report.Row{Name: fmt.Sprintf("output streaming %s to the stored log", size), Target: ">= 80% of kcat / ssh cat", Verdict: report.Missing})
	}

	// 3. File transfer.
	if len(r.artifact["kafka"]) > 0 {
		k, s, l := perTransport(func(tr string) string { return report.Rate(median(r.artifact[tr])) })
		row := report.Row{Name: fmt.Sprintf("file transfer: a %s artifact agent -> master's artifact store, end of step -> end of build (median of %d)", size, b.opts.rounds),
			Kafka: k, SSH: s, Local: l}
		if len(r.kcat) > 0 {
			row.Kafka += " (" + report.Percent(median(r.artifact["kafka"])/median(r.kcat)) + " of kcat)"
			row.SSH += " (" + report.Percent(median(r.artifact["ssh"])/median(r.sshCat)) + " of ssh cat)"
			row.Baseline = fmt.Sprintf("kcat %s; ssh cat %s", report.Rate(median(r.kcat)), report.Rate(median(r.sshCat)))
		}
		rep.Add(row)
	} else {
		rep.Add(report.Row{Name: fmt.Sprintf("file transfer: a %s artifact agent -> master", size), Verdict: report.Missing})
	}

	// 4. Cancel.
	if len(r.cancel["kafka"]) > 0 {
		var worst time.Duration
		k, s, l := perTransport(func(tr string) string {
			worst = max(worst, slices.Max(r.cancel[tr]))
			return report.Latency(report.Percentile(r.cancel[tr], 50)) + " / " + report.Latency(slices.Max(r.cancel[tr]))
		})
		rep.Add(report.Row{Name: fmt.Sprintf("cancel while %s streams, p50 / max of %d: cancel request -> build recorded cancelled", size, b.opts.cancels),
			Kafka: k, SSH: s, Local: l, Target: "< 1 s", Verdict: report.Check(worst < cancelTarget)})
	} else {
		rep.Add(report.Row{Name: "cancel while streaming", Target: "< 1 s", Verdict: report.Missing})
	}

	// 5. Scale.
	if sc := r.scale; sc != nil && sc.dispatch > 0 {
		n := int64(sc.agents)
		total := (sc.masterOnline + sc.pluginOnline - sc.masterEmpty - sc.pluginEmpty) / n
		rep.Add(report.Row{Name: fmt.Sprintf("%d idle agents on one server: server memory per agent (master + kafka plugin with its embedded broker, RSS over a server without nodes)", sc.agents),
			Kafka:    fmt.Sprintf("%s (master %s + plugin %s)", report.Size(total), report.Size((sc.masterOnline-sc.masterEmpty)/n), report.Size((sc.pluginOnline-sc.pluginEmpty)/n)),
			Baseline: fmt.Sprintf("nodes launched, no agent yet: %s per node", report.Size((sc.masterWaiting+sc.pluginWaiting-sc.masterEmpty-sc.pluginEmpty)/n)),
			Target:   "< 100 KiB each", Verdict: report.Check(total < perAgentTarget)})
		rep.Add(report.Row{Name: fmt.Sprintf("  CPU of %d idle agents' heartbeats over %s", sc.agents, sc.idle),
			Kafka:    fmt.Sprintf("server %s of a core", report.Percent(sc.idleCPU.Seconds()/sc.idle.Seconds())),
			Baseline: fmt.Sprintf("the agents themselves: %s of a core", report.Percent(sc.idleAgentsCPU.Seconds()/sc.idle.Seconds()))})
		rep.Add(report.Row{Name: fmt.Sprintf("  dispatch %d one-step builds across them: first trigger -> last finished", sc.agents),
			Kafka:    fmt.Sprintf("%s (%.0f builds/s, %d nodes used)", sc.dispatch.Round(time.Millisecond), float64(sc.agents)/sc.dispatch.Seconds(), sc.dispatchNodes),
			Baseline: fmt.Sprintf("%d agents came online in %s", sc.agents, sc.online.Round(time.Second))})
	} else {
		rep.Add(report.Row{Name: fmt.Sprintf("%d agents on one server", b.opts.agents), Target: "< 100 KiB each", Verdict: report.Missing})
	}

	// 6. Plugin hop.
	if len(r.hopWith) > 0 {
		with, without := median(r.hopWith), median(r.hopWithout)
		overhead := without/with - 1
		rep.Add(report.Row{Name: fmt.Sprintf("plugin hop: %s of output frames through the session, local launcher plugin vs the same agent on the bench's own pipes (median of %d)", size, b.opts.rounds),
			Local:  fmt.Sprintf("%s with, %s without: +%s time", report.Rate(with), report.Rate(without), report.Percent(overhead)),
			Target: "< 10% overhead", Verdict: report.Check(overhead < hopTarget)})
	} else {
		rep.Add(report.Row{Name: "plugin hop overhead", Target: "< 10% overhead", Verdict: report.Missing})
	}

	for _, e := range r.errors {
		rep.Note("Not measured: %s", strings.TrimSpace(e))
	}
}
