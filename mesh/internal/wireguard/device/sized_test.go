/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2026 the wiremesh authors.
 */

package device

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// ipv4Packet returns an IPv4 packet of size bytes from src to dst whose
// payload counts up: wireguard-go checks the total length and the source.
func ipv4Packet(size int, src, dst netip.Addr) []byte {
	p := make([]byte, size)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(size))
	p[8], p[9] = 64, 17
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	for i := 20; i < size; i++ {
		p[i] = byte(i)
	}
	return p
}

// TestSizedBuffersCarryMTUPackets runs a pair of devices with the smallest
// buffers NewDeviceSized allows over real UDP sockets: the tunnel MTU is
// capped to what fits (tuntest's 1420 to 1280), and packets of every size
// up to it, padded and sealed, fit in one buffer each way and arrive whole.
func TestSizedBuffersCarryMTUPackets(t *testing.T) {
	goroutineLeakCheck(t)
	pair := genTestPairSized(t, true, MinBufferSize)
	for i := range pair {
		if got := pair[i].dev.BufferSize(); got != MinBufferSize {
			t.Fatalf("device %d: BufferSize() = %d, want %d", i, got, MinBufferSize)
		}
		if got := pair[i].dev.tun.mtu.Load(); got != 1280 {
			t.Fatalf("device %d: MTU %d, want tuntest's %d capped to 1280", i, got, tuntest.DefaultMTU)
		}
	}
	for _, size := range []int{28, 1263, 1275, 1279, 1280} {
		for dir := range 2 {
			from, to := pair[dir], pair[1-dir]
			msg := ipv4Packet(size, from.ip, to.ip)
			from.tun.Outbound <- msg
			select {
			case got := <-to.tun.Inbound:
				if !bytes.Equal(got, msg) {
					t.Fatalf("%d-byte packet from %v: got %d bytes, not the packet sent", size, from.ip, len(got))
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%d-byte packet from %v did not arrive", size, from.ip)
			}
		}
	}
}

// TestNewDeviceSizedClamps: sizes outside [MinBufferSize, MaxMessageSize]
// are clamped, and NewDevice keeps upstream's 64 KiB buffers and MTU.
func TestNewDeviceSizedClamps(t *testing.T) {
	goroutineLeakCheck(t)
	for _, tc := range []struct{ ask, want, mtu int }{
		{0, MinBufferSize, 1280},
		{MinBufferSize - 1, MinBufferSize, 1280},
		{2048, 2048, 1420},
		{1 << 20, MaxMessageSize, 1420},
	} {
		tn := tuntest.NewChannelTUN()
		dev := NewDeviceSized(tn.TUN(), &fakeBindSized{size: 1}, NewLogger(LogLevelError, ""), tc.ask)
		if got := dev.BufferSize(); got != tc.want {
			t.Errorf("NewDeviceSized(%d): BufferSize() = %d, want %d", tc.ask, got, tc.want)
		}
		if got := len(*dev.GetMessageBuffer()); got != tc.want {
			t.Errorf("NewDeviceSized(%d): buffers of %d bytes, want %d", tc.ask, got, tc.want)
		}
		if got := int(dev.tun.mtu.Load()); got != tc.mtu {
			t.Errorf("NewDeviceSized(%d): MTU %d, want %d", tc.ask, got, tc.mtu)
		}
		dev.Close()
	}
	tn := tuntest.NewChannelTUN()
	dev := NewDevice(tn.TUN(), &fakeBindSized{size: 1}, NewLogger(LogLevelError, ""))
	defer dev.Close()
	if got := len(*dev.GetMessageBuffer()); got != MaxMessageSize {
		t.Errorf("NewDevice: buffers of %d bytes, want %d", got, MaxMessageSize)
	}
}
