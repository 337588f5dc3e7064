package magicsock

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/wiremesh/wiremesh/mesh/internal/wireguard/device"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/wiremesh/wiremesh/control/api"
)

func newTestKeys() (priv, pub api.Key) {
	priv = newKey()
	return priv, api.PublicKey(priv)
}

// wgInitiationFrom returns a handshake initiation that wireguard-go, with
// the private key initPriv, builds for the responder respPub, with its MACs.
func wgInitiationFrom(t *testing.T, initPriv, respPub api.Key) []byte {
	t.Helper()
	dev := device.NewDevice(tuntest.NewChannelTUN().TUN(), conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	defer dev.Close()
	if err := dev.SetPrivateKey(device.NoisePrivateKey(initPriv)); err != nil {
		t.Fatal(err)
	}
	peer, err := dev.NewPeer(device.NoisePublicKey(respPub))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := dev.CreateMessageInitiation(peer)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, msg); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	var cg device.CookieGenerator
	cg.Init(device.NoisePublicKey(respPub))
	cg.AddMacs(b)
	return b
}

// TestInitiatorKey reads the initiator's key out of initiations that
// wireguard-go builds, and refuses ones for another node, tampered ones
// and other messages.
func TestInitiatorKey(t *testing.T) {
	respPriv, respPub := newTestKeys()
	initPriv, initPub := newTestKeys()
	_, otherPub := newTestKeys()
	k := newInitiatorKeys(respPriv, respPub)

	b := wgInitiationFrom(t, initPriv, respPub)
	if len(b) != initLen {
		t.Fatalf("initiation is %d bytes, want %d", len(b), initLen)
	}
	got, ok := k.initiatorKey(b)
	if !ok || got != initPub {
		t.Fatalf("initiatorKey = %x, %v; want %x", got, ok, initPub)
	}

	if _, ok := k.initiatorKey(wgInitiationFrom(t, initPriv, otherPub)); ok {
		t.Error("an initiation for another node was read")
	}
	for _, off := range []int{initEphemeralOff, initStaticOff + 3, initMAC1Off} {
		bad := bytes.Clone(b)
		bad[off] ^= 1
		if _, ok := k.initiatorKey(bad); ok {
			t.Errorf("an initiation with byte %d flipped was read", off)
		}
	}
	// A wrong mac1 alone (static intact) is refused before any X25519.
	bad := bytes.Clone(b)
	bad[initMAC1Off+15] ^= 0x80
	if _, ok := k.initiatorKey(bad); ok {
		t.Error("an initiation with a bad mac1 was read")
	}
	if _, ok := k.initiatorKey(b[:initLen-1]); ok {
		t.Error("a short message was read")
	}
	resp := bytes.Clone(b)
	resp[0] = 2
	if _, ok := k.initiatorKey(resp); ok {
		t.Error("a message of type 2 was read")
	}
}

// TestInitiatorKeyAfterRotation: after SetPrivateKey the Conn reads
// initiations made for its new key, not for the old one.
func TestInitiatorKeyAfterRotation(t *testing.T) {
	oldPriv, oldPub := newTestKeys()
	newPriv, newPub := newTestKeys()
	initPriv, initPub := newTestKeys()
	c := New(Config{PrivateKey: oldPriv})
	if got, ok := c.keys().ik.initiatorKey(wgInitiationFrom(t, initPriv, oldPub)); !ok || got != initPub {
		t.Fatalf("before rotation: initiatorKey = %x, %v; want %x", got, ok, initPub)
	}
	c.SetPrivateKey(newPriv)
	if got, ok := c.keys().ik.initiatorKey(wgInitiationFrom(t, initPriv, newPub)); !ok || got != initPub {
		t.Fatalf("after rotation: initiatorKey = %x, %v; want %x", got, ok, initPub)
	}
	if _, ok := c.keys().ik.initiatorKey(wgInitiationFrom(t, initPriv, oldPub)); ok {
		t.Error("after rotation an initiation for the old key was read")
	}
}
