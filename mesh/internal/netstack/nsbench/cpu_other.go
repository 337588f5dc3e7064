//go:build !unix

package nsbench

import "time"

// CPUTime returns 0: the process CPU time is not read on this platform.
func CPUTime() time.Duration { return 0 }
