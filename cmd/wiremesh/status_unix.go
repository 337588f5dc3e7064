//go:build unix

package main

import (
	"fmt"
	"os"
	"syscall"
)

// checkSocketDir refuses a socket directory another local user could have
// prepared to swap the socket: it must belong to us (or root) and, unless
// it is sticky like /tmp, be writable by nobody else.
func checkSocketDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("status socket: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("status socket directory %s is not a directory", dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil // not a Unix file system: nothing to check
	}
	if uid := uint32(os.Getuid()); st.Uid != uid && st.Uid != 0 {
		return fmt.Errorf("status socket directory %s belongs to uid %d, not to this user (%d): remove it or choose --socket", dir, st.Uid, uid)
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&os.ModeSticky == 0 {
		return fmt.Errorf("status socket directory %s is writable by other users (mode %v): chmod 0700 it or choose --socket", dir, fi.Mode().Perm())
	}
	return nil
}
