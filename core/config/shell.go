package config

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// DefaultShell is what a step runs under when neither its job nor its node
// sets shell: not a login shell, so /etc/profile and ~/.profile are not
// read.
var DefaultShell = []string{"/bin/sh", "-c"}

// MaxShellArgs bounds the words of a shell setting.
const MaxShellArgs = 16

// StepShell is the shell job's steps run under on node: the job's, else
// the node's; nil means DefaultShell (the agent's own default, which any
// agent applies).
func StepShell(job *Job, node *Node) []string {
	if job != nil && len(job.Shell) > 0 {
		return job.Shell
	}
	if node != nil && len(node.Shell) > 0 {
		return node.Shell
	}
	return nil
}

// checkShell reports a shell setting that cannot start a program.
func checkShell(shell []string, rng hcl.Range) hcl.Diagnostics {
	if shell == nil {
		return nil
	}
	switch {
	case len(shell) == 0 || shell[0] == "":
		return hcl.Diagnostics{errorAt(rng, "Invalid shell",
			`The shell names the program the steps run under, then its arguments; the step's script is appended as the last argument: shell = ["bash", "-l", "-c"].`)}
	case len(shell) > MaxShellArgs:
		return hcl.Diagnostics{errorAt(rng, "Invalid shell",
			fmt.Sprintf("The shell has %d words; at most %d are accepted.", len(shell), MaxShellArgs))}
	}
	for _, w := range shell {
		if strings.ContainsRune(w, 0) {
			return hcl.Diagnostics{errorAt(rng, "Invalid shell", "A word of the shell holds a NUL byte, which no command line can carry.")}
		}
	}
	return nil
}

// shellEscapeHints completes hcl's "Variables not allowed" errors about an
// interpolation in a string ("echo ${HOME}" in a step's run): HCL reads
// ${...} itself, and the fix, $${...}, is not obvious to someone who meant
// the shell's variable.
func shellEscapeHints(diags hcl.Diagnostics, files map[string]*hcl.File) hcl.Diagnostics {
	for _, d := range diags {
		if d.Summary != "Variables not allowed" || d.Subject == nil {
			continue
		}
		f := files[d.Subject.Filename]
		if f == nil || d.Subject.Start.Byte > len(f.Bytes) {
			continue
		}
		before := bytes.TrimRight(f.Bytes[:d.Subject.Start.Byte], " \t~")
		if !bytes.HasSuffix(before, []byte("${")) {
			continue
		}
		name := "..."
		if end := d.Subject.End.Byte; end <= len(f.Bytes) && end > d.Subject.Start.Byte {
			name = string(f.Bytes[d.Subject.Start.Byte:end])
		}
		d.Detail = strings.TrimSpace(d.Detail + fmt.Sprintf(
			" HCL reads ${...} in a string as its own interpolation: to pass ${...} to the shell, write $${...} (here $${%s}). The same holds in a heredoc (<<-EOT ... EOT).", name))
	}
	return diags
}
