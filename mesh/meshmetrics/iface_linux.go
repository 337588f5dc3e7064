//go:build linux

package meshmetrics

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// readIfCounter reads /sys/class/net/ifname/statistics/file.
func readIfCounter(ifname, file string) (uint64, bool) {
	if ifname == "" || ifname == "." || ifname == ".." || strings.Contains(ifname, "/") {
		return 0, false
	}
	b, err := os.ReadFile(filepath.Join("/sys/class/net", ifname, "statistics", file))
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return v, err == nil
}
