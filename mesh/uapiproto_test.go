package mesh

import (
	"bufio"
	"encoding/hex"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// uapiExchange sends req on a connection served by serveUAPI(dev) and
// returns the answer up to and including its errno line and blank line.
func uapiExchange(t *testing.T, dev uapiDevice, req string) string {
	t.Helper()
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		serveUAPI(dev, server)
		server.Close()
	}()
	defer func() { client.Close(); <-done }()
	client.SetDeadline(time.Now().Add(10 * time.Second))
	go io.WriteString(client, req)
	r := bufio.NewReader(client)
	var b strings.Builder
	for {
		line, err := r.ReadString('\n')
		require.NoError(t, err, b.String())
		b.WriteString(line)
		if strings.HasPrefix(line, "errno=") {
			blank, err := r.ReadString('\n')
			require.NoError(t, err)
			require.Equal(t, "\n", blank)
			return b.String()
		}
	}
}

func TestServeUAPI(t *testing.T) {
	d, p := newTestDev(t, 1), newTestDev(t, 2)
	require.NoError(t, d.applyPeers(peersOf(p.peer(false, true))))
	require.NoError(t, p.applyPeers(peersOf(d.peer(false, true)))) // both sides, so probes are answered
	// The endpoint shows once the bind has confirmed a direct path to the
	// peer (a probe round trip); until then wg sees none.
	endpoint := regexp.MustCompile(`\nendpoint=127\.0\.0\.1:\d+\n`)
	var get string
	require.Eventually(t, func() bool {
		get = uapiExchange(t, d.dev, "get=1\n\n")
		return endpoint.MatchString(get)
	}, 10*time.Second, 20*time.Millisecond, "no direct endpoint in the UAPI answer")
	require.Contains(t, get, "public_key="+hex.EncodeToString(p.pub[:])+"\n")
	require.True(t, strings.HasSuffix(get, "errno=0\n"), get)

	require.Equal(t, "errno=0\n", uapiExchange(t, d.dev, "set=1\nfwmark=0\n\n"))
	require.Equal(t, "errno=-22\n", uapiExchange(t, d.dev, "set=1\nno_such_key=1\n\n"), "EINVAL, as wireguard-go answers")
	require.Equal(t, "errno=-22\n", uapiExchange(t, d.dev, "get=1\nx"))
}

// relayDevice answers "get" with an endpoint that is not an address, as
// a peer reached through a relay has.
type relayDevice struct{}

func (relayDevice) IpcGetOperation(w io.Writer) error {
	_, err := io.WriteString(w, "listen_port=1\npublic_key=0101010101010101010101010101010101010101010101010101010101010101\nendpoint=wmrelay:0101\nallowed_ip=100.64.0.2/32\npublic_key=0202020202020202020202020202020202020202020202020202020202020202\nendpoint=[fd00::2]:51820\n")
	return err
}

func (relayDevice) IpcSetOperation(r io.Reader) error { return nil }

func TestServeUAPIDropsRelayEndpoints(t *testing.T) {
	get := uapiExchange(t, relayDevice{}, "get=1\n\n")
	require.NotContains(t, get, "wmrelay")
	require.Contains(t, get, "allowed_ip=100.64.0.2/32\n")
	require.Contains(t, get, "endpoint=[fd00::2]:51820\n")
}
