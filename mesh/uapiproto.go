package mesh

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/wiremesh/wiremesh/mesh/internal/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
)

// uapiDevice is the part of *device.Device the UAPI socket serves.
type uapiDevice interface {
	IpcGetOperation(w io.Writer) error
	IpcSetOperation(r io.Reader) error
}

var _ uapiDevice = (*device.Device)(nil)

// serveUAPI answers WireGuard UAPI requests ("get=1", "set=1") on rw
// until the client closes it or sends something else: the protocol of
// device.IpcHandle, except that a "get" answer leaves out endpoint lines
// that are not IP:port. A peer reached through a relay has an endpoint
// that names the peer, not an address, and `wg show` fails on it
// ("Protocol error", or worse): without the line, wg shows no endpoint.
func serveUAPI(dev uapiDevice, rw io.ReadWriter) {
	r, w := bufio.NewReader(rw), bufio.NewWriter(rw)
	for {
		op, err := r.ReadString('\n')
		if err != nil {
			return
		}
		switch op {
		case "set=1\n":
			err = dev.IpcSetOperation(r)
		case "get=1\n":
			var b byte
			if b, err = r.ReadByte(); err != nil {
				return
			}
			if b != '\n' {
				err = fmt.Errorf("%w: %q after get=1", errUAPITrailing, b)
				break
			}
			var buf bytes.Buffer
			if err = dev.IpcGetOperation(&buf); err == nil {
				writeUAPIGet(w, buf.Bytes())
			}
		default:
			return
		}
		fmt.Fprintf(w, "errno=%d\n\n", uapiErrno(err))
		if w.Flush() != nil {
			return
		}
	}
}

// writeUAPIGet writes a "get" answer without its endpoint lines that are
// not IP:port.
func writeUAPIGet(w io.Writer, get []byte) {
	for line := range strings.Lines(string(get)) {
		if v, ok := strings.CutPrefix(line, "endpoint="); ok {
			if _, err := netip.ParseAddrPort(strings.TrimSuffix(v, "\n")); err != nil {
				continue
			}
		}
		io.WriteString(w, line)
	}
}

var errUAPITrailing = errors.New("trailing character in UAPI get")

// uapiErrno is the "errno" a UAPI answer carries for err (0 for nil), as
// device.IpcHandle computes it.
func uapiErrno(err error) int64 {
	var ie *device.IPCError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ie):
		return ie.ErrorCode()
	case errors.Is(err, errUAPITrailing):
		return ipc.IpcErrorInvalid
	}
	return ipc.IpcErrorUnknown
}
