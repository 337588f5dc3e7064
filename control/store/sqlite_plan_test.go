package store

import (
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSQLiteQueryPlans checks that the allocation and overlap queries use
// indexes: no full scan of devices or prefixes.
func TestSQLiteQueryPlans(t *testing.T) {
	s, err := OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "plan.db"))
	require.NoError(t, err)
	defer s.Close()
	p := keyOf(mustPrefix("10.1.0.0/16"))
	sup := supernets(mustPrefix("10.1.0.0/16"), 0)
	var vals []string
	args := []any{"default", 4, "dev_x"}
	for _, k := range sup {
		vals = append(vals, "(?,?)")
		args = append(args, k.start, k.bits)
	}
	tests := []struct {
		name  string
		query string
		args  []any
		want  string // must appear in the plan
	}{
		{"supernets", supernetQuery(strings.Join(vals, ",")), args,
			"SEARCH p USING PRIMARY KEY (zone=? AND family=? AND start=? AND bits=?)"},
		{"inside", insideQuery, []any{"default", 4, p.start, lastAddrBytes(mustPrefix("10.1.0.0/16")), 16, "dev_x"},
			"SEARCH p USING PRIMARY KEY (zone=? AND family=? AND start>? AND start<?)"},
		{"lowest free", gapQuery, []any{"default"},
			"SEARCH e USING COVERING INDEX devices_zone_idx (zone=? AND idx=?)"},
		{"compact", compactQuery, []any{"default", 0},
			"SEARCH changes USING COVERING INDEX changes_zone_rev (zone=?)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rows, err := s.r.QueryContext(t.Context(), "EXPLAIN QUERY PLAN "+tt.query, tt.args...)
			require.NoError(t, err)
			defer rows.Close()
			var plan []string
			for rows.Next() {
				var id, parent, notused int
				var detail string
				require.NoError(t, rows.Scan(&id, &parent, &notused, &detail))
				plan = append(plan, detail)
			}
			require.NoError(t, rows.Err())
			t.Logf("%s:\n  %s", tt.name, strings.Join(plan, "\n  "))
			require.Contains(t, plan, tt.want)
			for _, line := range plan {
				f := strings.Fields(line)
				if f[0] == "SCAN" && slices.Contains([]string{"p", "d", "e", "devices", "prefixes", "changes"}, f[1]) {
					require.Contains(t, line, "USING", "full table scan: %s", line)
				}
			}
		})
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
