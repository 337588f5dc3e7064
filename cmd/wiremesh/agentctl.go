package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh"
)

// Requests on the status socket.
//
// A client writes one JSON line, an agentRequest, and reads one JSON
// document: the mesh.Status for opStatus, an agentReply for the prefix
// operations; for opPing (a pingRequest) JSON lines (ping.go). A client that writes nothing within legacyGrace (a
// `wiremesh status` from before requests existed) gets the status.
const (
	opStatus    = "status"
	opAdvertise = "prefix-advertise"
	opRelease   = "prefix-release"
	opPing      = "ping"
	opLeave     = "leave" // wiremesh down: delete the device, stop the agent

	legacyGrace    = 300 * time.Millisecond
	agentOpTimeout = 30 * time.Second // a prefix operation asks the service
	maxRequestLine = 4 << 10
)

// agentAPI is what the status socket serves; *mesh.Node implements it.
type agentAPI interface {
	Status() mesh.Status
	AdvertisePrefix(ctx context.Context, p netip.Prefix) error
	ReleasePrefix(ctx context.Context, p netip.Prefix) error
	Ping(ctx context.Context, addr netip.Addr) (time.Duration, error)
}

var _ agentAPI = (*mesh.Node)(nil)

type agentRequest struct {
	Op     string       `json:"op"`
	Prefix netip.Prefix `json:"prefix,omitzero"`
}

// agentReply answers a prefix operation: the agent's child prefixes after
// it, or the error (with the service's code when it has one).
type agentReply struct {
	Prefixes []netip.Prefix `json:"prefixes,omitempty"`
	Error    string         `json:"error,omitempty"`
	Code     string         `json:"code,omitempty"`
}

// handle answers one connection.
func (s *statusServer) handle(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(legacyGrace))
	line, err := bufio.NewReaderSize(c, maxRequestLine).ReadSlice('\n')
	var req agentRequest
	switch {
	case err != nil && len(line) == 0: // nothing sent: a legacy status client
		req.Op = opStatus
	case err != nil:
		req.Op = "" // a partial or oversized line
	default:
		if json.Unmarshal(line, &req) != nil {
			req.Op = ""
		}
	}
	if req.Op == opStatus {
		c.SetDeadline(time.Now().Add(statusTimeout))
		json.NewEncoder(c).Encode(s.agent.Status())
		return
	}
	if req.Op == opPing {
		s.ping(c, line)
		return
	}
	c.SetDeadline(time.Now().Add(agentOpTimeout))
	ctx, cancel := context.WithTimeout(context.Background(), agentOpTimeout)
	defer cancel()
	json.NewEncoder(c).Encode(s.do(ctx, req))
}

func (s *statusServer) do(ctx context.Context, req agentRequest) agentReply {
	var err error
	switch req.Op {
	case opAdvertise, opRelease:
		if !req.Prefix.IsValid() {
			return agentReply{Error: "no prefix in the request", Code: api.CodeBadRequest}
		}
		if req.Op == opAdvertise {
			err = s.agent.AdvertisePrefix(ctx, req.Prefix)
		} else {
			err = s.agent.ReleasePrefix(ctx, req.Prefix)
		}
	case opLeave:
		err = s.doLeave()
	default:
		return agentReply{Error: fmt.Sprintf("unknown request %q", req.Op), Code: api.CodeBadRequest}
	}
	if err != nil {
		r := agentReply{Error: err.Error()}
		var ae *api.Error
		if errors.As(err, &ae) {
			r.Code = ae.Code
		}
		return r
	}
	return agentReply{Prefixes: s.agent.Status().Self.Prefixes}
}

// dialAgent connects to the agent's status socket at path, with ctx's
// deadline on the connection.
func dialAgent(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("no agent is running (nothing answers on %s): start one with 'wiremesh URL' or 'wiremesh router', or pass --interface/--socket", path)
		}
		return nil, fmt.Errorf("status socket %s: %w", path, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	return c, nil
}

// callAgent sends a prefix operation to the agent at path.
func callAgent(ctx context.Context, path string, req agentRequest) (agentReply, error) {
	ctx, cancel := context.WithTimeout(ctx, agentOpTimeout+statusTimeout)
	defer cancel()
	c, err := dialAgent(ctx, path)
	if err != nil {
		return agentReply{}, err
	}
	defer c.Close()
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return agentReply{}, fmt.Errorf("status socket %s: %w", path, err)
	}
	var r agentReply
	if err := json.NewDecoder(c).Decode(&r); err != nil {
		return agentReply{}, fmt.Errorf("status socket %s: reading the answer: %w", path, err)
	}
	return r, nil
}
