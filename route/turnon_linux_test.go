//go:build linux

package route

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netns"
)

// TestTurnOnUndoesInReverse: turnOn undoes what it changed in the reverse
// order of the changes (sysctls can depend on each other: the global
// switch is turned on first and off last), on restore and when a later
// write fails. Plain files stand for the sysctls; no namespace is
// entered.
func TestTurnOnUndoesInReverse(t *testing.T) {
	dir := t.TempDir()
	var paths []string
	for i := range 8 {
		p := filepath.Join(dir, fmt.Sprintf("s%d", i))
		v := "0"
		if i == 3 {
			v = "1" // already on: not changed, not undone
		}
		require.NoError(t, os.WriteFile(p, []byte(v+"\n"), 0o644))
		paths = append(paths, p)
	}
	want := slices.Clone(paths)
	want = slices.Delete(want, 3, 4)
	slices.Reverse(want)

	var undone []string
	undo := func(p, old string) error {
		require.Equal(t, "0", old)
		undone = append(undone, p)
		return writeSysctl(p, old)
	}
	restore, err := turnOn(netns.None(), paths, newOptions(nil), undo)
	require.NoError(t, err)
	for _, p := range paths {
		v, err := readSysctl(p)
		require.NoError(t, err)
		require.Equal(t, "1", v)
	}
	require.NoError(t, restore())
	require.Equal(t, want, undone, "undone in reverse order of change")
	require.NoError(t, restore(), "twice is fine")
	require.Len(t, undone, len(want), "and undoes nothing again")

	// A failure part way undoes what was changed, in reverse.
	undone = nil
	broken := append(slices.Clone(paths[:5]), filepath.Join(dir, "missing"))
	_, err = turnOn(netns.None(), broken, newOptions(nil), undo)
	require.Error(t, err)
	want = []string{paths[4], paths[2], paths[1], paths[0]}
	require.Equal(t, want, undone)
}
