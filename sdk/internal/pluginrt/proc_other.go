//go:build !linux

package pluginrt

import "syscall"

// ProcessAttr puts the plugin in its own process group; without a
// parent-death signal the plugin's own parent watch ends it when the host dies.
func ProcessAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// KillGroup kills the process group led by pid, the plugin and everything
// it started.
func KillGroup(pid int) { _ = syscall.Kill(-pid, syscall.SIGKILL) }
