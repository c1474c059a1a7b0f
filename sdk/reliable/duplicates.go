package reliable

import (
	"github.com/conveyor-ci/conveyor/sdk/wire"
	"github.com/hashicorp/go-hclog"
)

// DuplicateRun counts a run of duplicate frames an Inbox refused (a resume
// resends what the peer kept), so that each end logs one line for the run
// instead of one per frame. The zero value is an empty run.
type DuplicateRun struct {
	n           int
	first, last uint64
}

// Add counts f in the run.
func (d *DuplicateRun) Add(f *wire.Frame) {
	if d.n == 0 {
		d.first = f.Seq
	}
	d.n++
	d.last = f.Seq
}

// Report logs the run, if any, on log and starts a new one.
func (d *DuplicateRun) Report(log hclog.Logger) {
	if d.n == 0 {
		return
	}
	log.Info("dropped duplicate frames (resent after a resume, or replayed)", "frames", d.n, "first_seq", d.first, "last_seq", d.last)
	*d = DuplicateRun{}
}
