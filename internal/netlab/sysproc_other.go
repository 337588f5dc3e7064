//go:build !linux

package netlab

import "syscall"

// sysProcAttr puts a Proc in its own process group (so Stop reaches its
// children). Labs need Linux; this only keeps the package compiling.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
