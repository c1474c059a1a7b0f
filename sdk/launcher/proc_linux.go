package launcher

import "syscall"

// processAttr puts the plugin in its own process group (so the host can
// kill it and everything it started) and has the kernel kill it when the
// host dies.
func processAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

func killGroup(pid int) { _ = syscall.Kill(-pid, syscall.SIGKILL) }
