//go:build !linux

package launcher

import "syscall"

// processAttr puts the plugin in its own process group; without a
// parent-death signal the plugin's own parent watch ends it when the host dies.
func processAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

func killGroup(pid int) { _ = syscall.Kill(-pid, syscall.SIGKILL) }
