// Package pgtest runs a throwaway PostgreSQL server for tests and hands
// out one fresh database per test.
//
// A test binary calls [Main] from TestMain. The first test that asks for a
// database starts a cluster (initdb and pg_ctl from the Debian package
// `postgresql`, or from PATH) in a temporary directory, listening only on a
// Unix socket there; Main stops and removes it when the tests are done. When $WIREMESH_TEST_POSTGRES holds a DSN, that
// server is used instead (its role needs CREATEDB). Tests then call [DB] for
// a database of their own, owned by a password-authenticated role without
// superuser rights, as a real deployment would use.
//
// Without PostgreSQL the tests skip, and one line saying so is appended to
// the file named by $WIREMESH_TEST_NOTES (CI prints it). A
// $WIREMESH_TEST_POSTGRES that does not answer fails the tests instead.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Environment variables read by this package.
const (
	// DSNEnv names an existing server to use instead of starting one.
	DSNEnv = "WIREMESH_TEST_POSTGRES"
	// NotesEnv names a file to which a skipped run appends one line.
	NotesEnv = "WIREMESH_TEST_NOTES"
)

// Role and password of the unprivileged role that owns test databases of a
// server started by this package.
const (
	Role     = "wiremesh"
	Password = "wiremesh-test-password"
)

// Server is a running PostgreSQL server: started by [Start] or given by
// $WIREMESH_TEST_POSTGRES.
type Server struct {
	// AdminDSN connects as a role allowed to create databases and roles.
	AdminDSN string
	// external: not ours to stop or restart.
	external bool

	dir     string // cluster directory (data/, sockets, log)
	bin     string // directory of initdb, pg_ctl
	cred    *syscall.Credential
	port    int
	testDSN url.URL // a DSN with Role/Password and no database
}

// Start creates a cluster in dir (which must be empty or absent) and
// starts it on a Unix socket in dir. As root it runs the server as the
// `postgres` system user (PostgreSQL refuses to run as root).
func Start(ctx context.Context, dir string) (*Server, error) {
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, bin: bin, port: 5432}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("pgtest: running as root and there is no `postgres` user to run the server as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, fmt.Errorf("pgtest: %w", err)
		}
	}
	// Whose cluster this is: sweepOrphans stops it if this process dies
	// without stopping it (a test binary killed by its timeout).
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	pwFile := filepath.Join(dir, "pw")
	if err := s.writeFile(pwFile, "postgres-superuser-unused\n"); err != nil {
		return nil, err
	}
	if err := s.run(ctx, "initdb", "-D", s.dataDir(), "-U", "postgres", "--pwfile", pwFile,
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
		"--auth-local=trust", "--auth-host=scram-sha-256"); err != nil {
		return nil, err
	}
	// The superuser connects over the socket without a password; every
	// other role must give its password, so a wrong one is refused.
	hba := "local all postgres trust\nlocal all all scram-sha-256\n"
	if err := s.writeFile(filepath.Join(s.dataDir(), "pg_hba.conf"), hba); err != nil {
		return nil, err
	}
	if err := s.StartServer(ctx); err != nil {
		return nil, err
	}
	s.AdminDSN = (&url.URL{Scheme: "postgres", User: url.User("postgres"), Path: "/postgres",
		RawQuery: url.Values{"host": {dir}, "port": {strconv.Itoa(s.port)}}.Encode()}).String()
	s.testDSN = url.URL{Scheme: "postgres", User: url.UserPassword(Role, Password),
		RawQuery: url.Values{"host": {dir}, "port": {strconv.Itoa(s.port)}}.Encode()}
	if err := s.exec(ctx, fmt.Sprintf(`CREATE ROLE %s LOGIN CREATEDB PASSWORD '%s'`, Role, Password)); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Connect returns a Server for an existing one given by an admin DSN. Its
// databases are created and dropped with that role, which needs CREATEDB.
func Connect(ctx context.Context, dsn string) (*Server, error) {
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, fmt.Errorf("pgtest: $%s: want a postgres:// URL", DSNEnv)
	}
	s := &Server{AdminDSN: dsn, external: true, testDSN: *u}
	s.testDSN.Path = ""
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("pgtest: $%s: %w", DSNEnv, err)
	}
	return s, c.Close(ctx)
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }

// External reports a server this package did not start (it cannot be
// stopped or restarted by a test).
func (s *Server) External() bool { return s.external }

// StartServer starts the cluster (again) and waits until it accepts
// connections.
func (s *Server) StartServer(ctx context.Context) error {
	if s.external {
		return errors.New("pgtest: cannot start an external server")
	}
	opts := strings.Join([]string{
		"-k " + s.dir, "-p " + strconv.Itoa(s.port), "-c listen_addresses=''",
		// A test cluster: no fsync (a process crash loses nothing, the OS
		// keeps the pages), but commits are still synchronous.
		"-c fsync=off", "-c full_page_writes=off", "-c max_connections=300",
	}, " ")
	return s.run(ctx, "pg_ctl", "-D", s.dataDir(), "-l", filepath.Join(s.dir, "server.log"),
		"-w", "-t", "60", "-o", opts, "start")
}

// StopServer stops the cluster. mode is pg_ctl's: "fast" (roll back open
// transactions, clean shutdown) or "immediate" (like a crash).
func (s *Server) StopServer(ctx context.Context, mode string) error {
	if s.external {
		return errors.New("pgtest: cannot stop an external server")
	}
	return s.run(ctx, "pg_ctl", "-D", s.dataDir(), "-w", "-t", "60", "-m", mode, "stop")
}

// Stop stops a server started by Start and removes its directory.
func (s *Server) Stop() error {
	if s.external {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := s.StopServer(ctx, "immediate")
	return errors.Join(err, os.RemoveAll(s.dir))
}

// NewDatabase creates an empty database owned by the test role and returns
// its DSN. Drop it with DropDatabase.
func (s *Server) NewDatabase(ctx context.Context) (name, dsn string, err error) {
	var b [6]byte
	rand.Read(b[:])
	name = "wmtest_" + hex.EncodeToString(b[:])
	owner := ""
	if !s.external {
		owner = " OWNER " + Role
	}
	if err := s.exec(ctx, `CREATE DATABASE `+name+owner); err != nil {
		return "", "", err
	}
	return name, s.DSN(name), nil
}

// DSN returns the test role's DSN for database name.
func (s *Server) DSN(name string) string {
	u := s.testDSN
	u.Path = "/" + name
	return u.String()
}

// DropDatabase drops a database made by NewDatabase, ending its sessions.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	return s.exec(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`)
}

func (s *Server) exec(ctx context.Context, sql string) error {
	c, err := pgx.Connect(ctx, s.AdminDSN)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	if _, err := c.Exec(ctx, sql); err != nil {
		return fmt.Errorf("pgtest: %s: %w", strings.Fields(sql)[0], err)
	}
	return nil
}

func (s *Server) writeFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if s.cred != nil {
		if err := os.Chown(path, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
	}
	return nil
}

// run runs a PostgreSQL program as the server's user.
func (s *Server) run(ctx context.Context, prog string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, prog), args...)
	cmd.Dir = s.dir
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
		return fmt.Errorf("pgtest: %s: %w\n%s\nserver log:\n%s", prog, err, out, tail(string(log), 2000))
	}
	return nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// findBin returns the directory of initdb: PATH, else the newest
// /usr/lib/postgresql/*/bin (Debian puts it there, off PATH).
func findBin() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	if len(dirs) == 0 {
		return "", errors.New("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin; apt-get install postgresql)")
	}
	return filepath.Dir(dirs[0]), nil
}

// version is the major version in /usr/lib/postgresql/N/bin/initdb.
func version(path string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return v
}

// The server of this test binary, started by the first Shared.
var (
	sharedOnce sync.Once
	shared     *Server
	sharedErr  error
	mainCalled bool
	noteOnce   sync.Once
)

// Main runs the tests and then stops the server that Shared started, if
// any. Call it from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
func Main(m *testing.M) {
	mainCalled = true
	code := m.Run()
	if shared != nil {
		if err := shared.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest: stopping the server:", err)
		}
	}
	os.Exit(code)
}

// Shared returns the test binary's server, starting it (or connecting to
// $WIREMESH_TEST_POSTGRES) on first use. Without one it skips t (see
// NotRun).
func Shared(t testing.TB) *Server {
	t.Helper()
	if !mainCalled {
		t.Fatal("pgtest: call pgtest.Main from TestMain, so that the server is stopped after the tests")
	}
	sharedOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if dsn := os.Getenv(DSNEnv); dsn != "" {
			shared, sharedErr = Connect(ctx, dsn)
			return
		}
		sweepOrphans()
		dir, err := os.MkdirTemp("", tempPattern)
		if err != nil {
			sharedErr = err
			return
		}
		if shared, sharedErr = Start(ctx, dir); sharedErr != nil {
			os.RemoveAll(dir)
		}
	})
	switch {
	case shared != nil:
	case os.Getenv(DSNEnv) != "":
		// Asked for explicitly: a broken one is an error, not a skip.
		t.Fatal(sharedErr)
	default:
		NotRun(t, "%v", sharedErr)
	}
	return shared
}

// DB creates a fresh database on the shared server for t, dropped when t
// ends, and returns its DSN (the unprivileged test role, with password).
func DB(t testing.TB) string {
	t.Helper()
	s := Shared(t)
	name, dsn, err := s.NewDatabase(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.DropDatabase(ctx, name); err != nil {
			t.Errorf("drop test database: %v", err)
		}
	})
	return dsn
}

// NotRun skips t with a message starting "postgres tests did not run" and
// appends that line, once per test binary, to $WIREMESH_TEST_NOTES.
func NotRun(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf("postgres tests did not run (%s): ", filepath.Base(os.Args[0])) + fmt.Sprintf(format, args...)
	noteOnce.Do(func() {
		path := os.Getenv(NotesEnv)
		if path == "" {
			return
		}
		if f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
			fmt.Fprintln(f, msg)
			f.Close()
		}
	})
	t.Skip(msg)
}

// Own starts a server of t's own (for tests that stop or restart it),
// stopped and removed when t ends. It skips t (see NotRun) when PostgreSQL
// is not installed, and when the shared server is an external one (a test
// that restarts servers must not need a second external one).
func Own(t testing.TB) *Server {
	t.Helper()
	if s := Shared(t); s.External() {
		NotRun(t, "this test starts its own server; $%s is set", DSNEnv)
	}
	// Not t.TempDir: its parents are private to root, and the server runs
	// as another user.
	dir, err := os.MkdirTemp("", tempPattern)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	s, err := Start(ctx, dir)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop server: %v", err)
		}
	})
	return s
}

// Clusters started by this package live in os.TempDir()/wmpg*, with the
// pid of the process that started them in ownerFile.
const (
	tempPattern = "wmpg"
	ownerFile   = "owner.pid"
)

// sweepOrphans stops and removes the clusters of test processes that died
// without stopping them, so that a killed test run leaves no server
// behind for long.
func sweepOrphans() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPattern+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // not (yet) one of ours
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue // its owner still runs
		}
		bin, err := findBin()
		if err != nil {
			return
		}
		s := &Server{dir: dir, bin: bin}
		if st, err := os.Stat(dir); err == nil && os.Geteuid() == 0 {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				s.cred = &syscall.Credential{Uid: sys.Uid, Gid: sys.Gid}
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_ = s.StopServer(ctx, "immediate") // fails harmlessly when it is not running
		cancel()
		os.RemoveAll(dir)
	}
}
