package netlab

import "syscall"

// sysProcAttr puts a Proc in its own process group (so Stop reaches its
// children) and has the kernel SIGKILL it if the test binary dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
