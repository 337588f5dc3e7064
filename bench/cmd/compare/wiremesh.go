package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/wiremesh/wiremesh/bench/measure"
	"github.com/wiremesh/wiremesh/control/adminclient"
	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// wiremeshSystem is the coordination service from meshtest (TLS with a
// pinned self-signed certificate, STUN on 127.0.0.1) and userspace members.
type wiremeshSystem struct {
	srv   *meshtest.Server
	admin *adminclient.Client
}

func newWiremesh() (*wiremeshSystem, error) {
	srv, err := meshtest.Open()
	if err != nil {
		return nil, err
	}
	admin, err := adminclient.New(srv.URL, adminclient.Options{AdminToken: srv.AdminToken, Fingerprint: srv.Service().Fingerprint()})
	if err != nil {
		srv.Close()
		return nil, fmt.Errorf("admin client: %w", err)
	}
	return &wiremeshSystem{srv: srv, admin: admin}, nil
}

func (s *wiremeshSystem) Join(ctx context.Context, hostname string) (measure.Member, error) {
	n, err := mesh.Join(ctx, s.srv.URL, mesh.WithToken(s.srv.Token), mesh.WithHostname(hostname))
	if err != nil {
		return nil, fmt.Errorf("mesh.Join %s: %w", hostname, err)
	}
	return wiremeshMember{n}, nil
}

// leave closes m and makes sure its device is gone, so that every join meets
// the same mesh. A node without a state directory is ephemeral and deletes
// its own device in Close; the admin DELETE covers a Close that could not.
func (s *wiremeshSystem) Leave(ctx context.Context, m measure.Member) error {
	n := m.(wiremeshMember).n
	id := n.Status().Self.DeviceID
	if err := n.Close(); err != nil {
		return err
	}
	err := s.admin.DeleteDevice(ctx, id)
	if aerr := (*api.Error)(nil); errors.As(err, &aerr) && aerr.Code == api.CodeNotFound {
		return nil
	}
	return err
}

func (s *wiremeshSystem) Close() {
	s.admin.Close()
	s.srv.Close()
}

type wiremeshMember struct{ n *mesh.Node }

func (m wiremeshMember) Addr() netip.Addr { return m.n.Addr() }

func (m wiremeshMember) Listen(port uint16) (net.Listener, error) {
	return m.n.Listen("tcp", fmt.Sprintf(":%d", port))
}

func (m wiremeshMember) Dial(ctx context.Context, to netip.AddrPort) (net.Conn, error) {
	return m.n.Dial(ctx, "tcp", to.String())
}

func (m wiremeshMember) Ready(_ context.Context, peers int) bool {
	st := m.n.Status()
	if len(st.Peers) != peers {
		return false
	}
	for _, p := range st.Peers {
		if p.LastHandshake.IsZero() {
			return false
		}
	}
	return true
}

func (m wiremeshMember) Idle(ctx context.Context, peers int) bool { return m.Ready(ctx, peers) }

func (m wiremeshMember) Close() error { return m.n.Close() }
