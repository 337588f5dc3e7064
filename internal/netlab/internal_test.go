package netlab

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseBanner(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Banner
		wantErr string
	}{
		{
			name: "ipv4",
			in:   "netlab-tcp host=ctr local=172.24.0.2:7000 remote=172.24.0.1:40000",
			want: Banner{Host: "ctr", Local: netip.MustParseAddrPort("172.24.0.2:7000"), Remote: netip.MustParseAddrPort("172.24.0.1:40000")},
		},
		{
			name: "ipv6",
			in:   "netlab-tcp host=a local=[::1]:7 remote=[::1]:9",
			want: Banner{Host: "a", Local: netip.MustParseAddrPort("[::1]:7"), Remote: netip.MustParseAddrPort("[::1]:9")},
		},
		{name: "other server", in: "SSH-2.0-OpenSSH_9.2", wantErr: "not a netlab banner"},
		{name: "bad address", in: "netlab-tcp host=a local=nope remote=[::1]:9", wantErr: `"nope"`},
		{name: "unknown field", in: "netlab-tcp host=a local=[::1]:7 color=red", wantErr: `unknown field "color"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseBanner(tt.in)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			require.Equal(t, tt.in, got.String(), "String and parse round-trip")
		})
	}
}

func TestChecksum(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want uint16
	}{
		// RFC 1071 section 3 example: sum 0xddf2, checksum ^0xddf2.
		{name: "rfc1071", in: []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}, want: ^uint16(0xddf2)},
		{name: "odd length", in: []byte{0x01}, want: ^uint16(0x0100)},
		{name: "empty", in: nil, want: 0xffff},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, checksum(tt.in))
		})
	}
	// A message with its checksum filled in sums to zero.
	msg := []byte{8, 0, 0, 0, 0x12, 0x34, 0, 1, 'h', 'i', '!'}
	c := checksum(msg)
	msg[2], msg[3] = byte(c>>8), byte(c)
	require.Equal(t, uint16(0), checksum(msg))
}

func TestParseLinkNames(t *testing.T) {
	out := []byte("1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue\\    link/loopback 00:00:00:00:00:00\n" +
		"7: wan@if6: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue\\    link/ether 1a:2b\n" +
		"3: docker0: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500\n\n")
	require.Equal(t, []string{"docker0", "lo", "wan"}, parseLinkNames(out))
}

func TestFindLine(t *testing.T) {
	line, ok := findLine("starting\nlistening on 192.0.2.1:8443\npartial", "listening")
	require.True(t, ok)
	require.Equal(t, "listening on 192.0.2.1:8443", line)
	line, ok = findLine("starting\npart", "part")
	require.True(t, ok, "an unterminated last line counts")
	require.Equal(t, "part", line)
	_, ok = findLine("", "x")
	require.False(t, ok)
}

func TestProcStartTime(t *testing.T) {
	st, err := procStartTime(os.Getpid())
	require.NoError(t, err)
	require.NotZero(t, st)
	_, err = procStartTime(1 << 30)
	require.Error(t, err)
}

func TestInvalidNames(t *testing.T) {
	l := New(t)
	for _, name := range []string{"", "Node1", "node_1", "1node", "a-very-long-name", "node1-", "a/b"} {
		_, err := l.newNode(name)
		require.ErrorContains(t, err, "invalid name", "name %q", name)
	}
	_, err := l.newNode("dup")
	require.NoError(t, err)
	_, err = l.newNode("dup")
	require.ErrorContains(t, err, `name "dup" already used`)
}

func TestWaitForExitedProcess(t *testing.T) {
	l := New(t)
	p := l.Host("quick").Start(t, "sh", "-c", "echo only-this")
	start := time.Now()
	_, err := p.waitFor("never-printed", 10*time.Second)
	require.ErrorContains(t, err, `exited with status 0 without printing "never-printed"`)
	require.Less(t, time.Since(start), 5*time.Second, "an exit ends the wait early")
	_, err = l.Host("slow").Start(t, "sleep", "30").waitFor("x", 100*time.Millisecond)
	require.ErrorContains(t, err, `printed no "x" within 100ms`)
}

// TestSweepRemovesDeadRuns fakes the leftovers of a crashed run (a state
// file naming a dead process, its namespace with a process inside) and of
// a run without state file, and checks that Sweep removes them while a
// live lab survives.
func TestSweepRemovesDeadRuns(t *testing.T) {
	l := New(t) // New sweeps too: make the live lab before the leftovers
	alive := l.Host("alive")

	exited := exec.Command("true")
	require.NoError(t, exited.Run())
	deadID, err := claimRunID()
	require.NoError(t, err)
	deadState := filepath.Join(StateDir, deadID)
	require.NoError(t, os.WriteFile(deadState, fmt.Appendf(nil, "%d 1\n", exited.Process.Pid), 0o644))
	t.Cleanup(func() { _ = os.Remove(deadState) })

	orphanID, err := claimRunID()
	require.NoError(t, err)
	require.NoError(t, os.Remove(filepath.Join(StateDir, orphanID)))

	crashedNS, orphanNS := "wm"+deadID+"-crashed", "wm"+orphanID+"-orphan"
	for _, ns := range []string{crashedNS, orphanNS} {
		out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput()
		require.NoError(t, err, "%s", out)
		t.Cleanup(func() { _ = removeNamespace(ns) })
	}
	stray := exec.Command("ip", "netns", "exec", crashedNS, "sleep", "300")
	require.NoError(t, stray.Start())
	t.Cleanup(func() { _ = stray.Process.Kill() })
	// Wait until `ip netns exec` has entered the namespace and exec'd sleep.
	var nsSt syscall.Stat_t
	require.NoError(t, syscall.Stat(filepath.Join(netnsDir, crashedNS), &nsSt))
	require.Eventually(t, func() bool {
		var st syscall.Stat_t
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", stray.Process.Pid))
		return err == nil && string(comm) == "sleep\n" &&
			syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", stray.Process.Pid), &st) == nil && st.Ino == nsSt.Ino
	}, 5*time.Second, 10*time.Millisecond)

	msgs := Sweep()
	require.Contains(t, msgs, fmt.Sprintf("swept namespace %s of dead run %s", crashedNS, deadID))
	require.Contains(t, msgs, fmt.Sprintf("swept namespace %s of dead run %s", orphanNS, orphanID))
	require.Contains(t, msgs, fmt.Sprintf("swept state file of dead run %s", deadID))

	for _, ns := range []string{crashedNS, orphanNS} {
		_, err := os.Stat(filepath.Join(netnsDir, ns))
		require.ErrorIs(t, err, os.ErrNotExist, ns)
	}
	_, err = os.Stat(deadState)
	require.ErrorIs(t, err, os.ErrNotExist)
	require.ErrorContains(t, stray.Wait(), "killed", "the process in the crashed run's namespace is killed")

	_, err = os.Stat(alive.Path())
	require.NoError(t, err, "a live lab's namespace survives the sweep")
	require.True(t, runAlive(l.ID()))
}
