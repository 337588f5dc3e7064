//go:build !linux

package udpbind

import "net"

// dualStack is false: one socket per family off Linux, where sending to an
// IPv4 address on an IPv6 socket is not portable.
const dualStack = false

func isDualStack(*net.UDPConn) bool { return false }

// oobSize is zero: no offload control messages off Linux.
var oobSize = 0

func enableOffload(*net.UDPConn) (tx, rx bool) { return false, false }
func groSize([]byte) int                       { return 0 }
func putSegmentSize(*[]byte, int)              {}
func shouldDisableGSO(error) bool              { return false }
func setMark(*net.UDPConn, uint32) error       { return nil }

// msgTrunc is not looked for off Linux: a datagram cut to its buffer fails
// WireGuard's authentication and is dropped there instead.
const msgTrunc = 0
