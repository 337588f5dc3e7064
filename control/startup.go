package control

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
)

// listeners are the sockets of a starting Service, bound before anything
// is written to the data directory so that a start that cannot bind (port
// in use) leaves nothing behind.
type listeners struct {
	api            net.Listener
	stun           *STUNServer // nil when STUN is off
	stunAdvertised string
}

// bind opens the API listener and the STUN socket.
func bind(ctx context.Context, o Options, log *slog.Logger) (*listeners, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("API listener: %w", err)
	}
	l := &listeners{api: ln}
	if o.STUNListen == "off" {
		return l, nil
	}
	pc, err := lc.ListenPacket(ctx, "udp", o.STUNListen)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("STUN listener: %w", err)
	}
	l.stun = NewSTUNServer(pc, log)
	sa := l.stun.Addr()
	if sa.Addr().IsUnspecified() {
		l.stunAdvertised = ":" + strconv.Itoa(int(sa.Port()))
	} else {
		l.stunAdvertised = sa.String()
	}
	return l, nil
}

// close closes what bind opened.
func (l *listeners) close() {
	l.api.Close()
	if l.stun != nil {
		l.stun.Close()
	}
}

// dataDirFiles are the files a start may create in the data directory
// (the database with SQLite's companions).
var dataDirFiles = []string{DBFile, DBFile + "-wal", DBFile + "-shm", DBFile + "-journal",
	ServerKeyFile, AdminTokenFile, TLSCertFile, TLSKeyFile}

// dataDirUndo remembers what the data directory held before a start, so a
// start that fails removes exactly what it created.
type dataDirUndo struct {
	dir     string
	existed bool            // the directory existed
	had     map[string]bool // files of dataDirFiles that existed
}

func newDataDirUndo(dir string) (*dataDirUndo, error) {
	u := &dataDirUndo{dir: dir, had: make(map[string]bool)}
	var err error
	if u.existed, err = exists(dir); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	if !u.existed {
		return u, nil
	}
	for _, f := range dataDirFiles {
		if u.had[f], err = exists(filepath.Join(dir, f)); err != nil {
			return nil, fmt.Errorf("data directory: %w", err)
		}
	}
	return u, nil
}

// undo removes what was created since newDataDirUndo.
func (u *dataDirUndo) undo() error {
	if !u.existed {
		return os.RemoveAll(u.dir)
	}
	var errs []error
	for _, f := range dataDirFiles {
		if u.had[f] {
			continue
		}
		if err := os.Remove(filepath.Join(u.dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
