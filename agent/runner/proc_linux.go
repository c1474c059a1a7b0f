package runner

import "syscall"

// sysProcAttr puts the step in its own process group, and has the kernel
// kill its shell should the agent die without cleaning up.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
