//go:build !linux

package udpbind

import "net"

// oobSize is zero: no offload control messages off Linux.
var oobSize = 0

func enableOffload(*net.UDPConn) (tx, rx bool) { return false, false }
func groSize([]byte) int                       { return 0 }
func putSegmentSize(*[]byte, int)              {}
func shouldDisableGSO(error) bool              { return false }
func setMark(*net.UDPConn, uint32) error       { return nil }
