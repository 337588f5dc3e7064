//go:build !linux

package meshmetrics

// readIfCounter: interface counters are read on Linux only (kernel mode
// is Linux only).
func readIfCounter(ifname, file string) (uint64, bool) { return 0, false }
