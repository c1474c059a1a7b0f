package pluginrt

import "syscall"

// ProcessAttr puts the plugin in its own process group (so the host can
// kill it and everything it started) and has the kernel kill it when the
// host dies.
func ProcessAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// KillGroup kills the process group led by pid, the plugin and everything
// it started.
func KillGroup(pid int) { _ = syscall.Kill(-pid, syscall.SIGKILL) }
