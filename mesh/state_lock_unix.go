//go:build unix

package mesh

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// lockFileName is the file a node holds an exclusive flock(2) on while it
// uses its state directory.
const lockFileName = "lock"

// lock takes the state directory for this node (creating it, 0700): a
// second node using the same directory, in this process or another, gets
// ErrStateDirInUse instead of sharing (and corrupting) one identity. The
// lock goes with the process, so a crash leaves nothing stale. Close
// releases it; an ephemeral node ("") holds nothing.
func (d stateDir) lock() (io.Closer, error) {
	if d == "" {
		return io.NopCloser(nil), nil
	}
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return nil, fmt.Errorf("state dir %q: %w", string(d), err)
	}
	path := filepath.Join(string(d), lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state dir %q: %w", string(d), err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("state dir %q: %w (is another agent running with it? give each node its own directory)", string(d), ErrStateDirInUse)
		}
		return nil, fmt.Errorf("state dir %q: lock: %w", string(d), err)
	}
	return f, nil
}
