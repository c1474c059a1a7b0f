//go:build unix && !linux

package runner

import "syscall"

// sysProcAttr puts the step in its own process group.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
