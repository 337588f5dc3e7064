package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// The status socket's protocol. A client connects and sends one request,
// a JSON object on one line with at least "op":
//
//	{"op":"status"}                       → the mesh.Status, one JSON document
//	{"op":"ping","target":"web","count":4} → JSON lines (see ping.go)
//
// and the agent answers with JSON documents, then closes the connection.
// An unknown op is answered {"error":"..."}. A client that sends nothing
// within legacyRequestWait gets the status (the protocol's first version,
// which had no requests: `socat - UNIX-CONNECT:/run/wiremesh/wg0.sock`).

// legacyRequestWait is how long the agent waits for a request before it
// answers with the status.
const legacyRequestWait = 500 * time.Millisecond

// maxRequestSize bounds a request line.
const maxRequestSize = 64 << 10

// statusRequest is the part of a request every op has.
type statusRequest struct {
	Op string `json:"op"`
}

// statusOp serves one request kind: raw is the whole request line (the op
// decodes its own fields); it writes its answers to enc and returns when
// done, or when ctx ends (the client went away, or the agent stops).
type statusOp func(ctx context.Context, raw []byte, enc *json.Encoder) error

// statusOption adds ops to a status server.
type statusOption func(*statusServer)

// withOp serves op for requests {"op": name}.
func withOp(name string, op statusOp) statusOption {
	return func(s *statusServer) { s.ops[name] = op }
}

// statusErrorReply is the answer to a request that failed as a whole.
type statusErrorReply struct {
	Error string `json:"error"`
}

// handle reads one request from c and serves it. c is closed on return.
func (s *statusServer) handle(ctx context.Context, c net.Conn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(legacyRequestWait))
	br := bufio.NewReaderSize(c, 4096)
	line, err := readLine(br)
	var nerr net.Error
	switch {
	case errors.As(err, &nerr) && nerr.Timeout() && len(line) == 0:
		line = []byte(`{"op":"status"}`) // a first-version client
	case err != nil:
		return
	}
	c.SetReadDeadline(time.Time{})
	var req statusRequest
	enc := json.NewEncoder(c)
	if err := json.Unmarshal(line, &req); err != nil {
		enc.Encode(statusErrorReply{fmt.Sprintf("bad request: %v", err)})
		return
	}
	op, ok := s.ops[req.Op]
	if !ok {
		enc.Encode(statusErrorReply{fmt.Sprintf("unknown request %q: this agent serves %v (is it an older version?)", req.Op, s.opNames())})
		return
	}
	// The op ends when the client hangs up (its read sees EOF) or the
	// server closes.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		br.ReadByte() // returns when the client hangs up or c is closed
		cancel()
	}()
	defer func() {
		c.Close()
		<-readDone
	}()
	if err := op(ctx, line, enc); err != nil {
		enc.Encode(statusErrorReply{err.Error()})
	}
}

// readLine reads one line of at most maxRequestSize bytes.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		b, err := br.ReadSlice('\n')
		line = append(line, b...)
		if len(line) > maxRequestSize {
			return nil, errors.New("request too large")
		}
		if err != bufio.ErrBufferFull {
			return line, err
		}
	}
}

func (s *statusServer) opNames() []string {
	names := make([]string, 0, len(s.ops))
	for n := range s.ops {
		names = append(names, n)
	}
	return names
}

// statusCall connects to the agent at path and sends req (marshalled as
// one line). The caller reads the answers from the returned decoder and
// closes the connection. ctx bounds the connection's whole life.
func statusCall(ctx context.Context, path string, req any) (*json.Decoder, net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, nil, fmt.Errorf("no agent is running (nothing answers on %s): start one with 'wiremesh URL' or 'wiremesh router', or pass --interface/--socket", path)
		}
		return nil, nil, fmt.Errorf("status socket %s: %w", path, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	b, err := json.Marshal(req)
	if err == nil {
		_, err = c.Write(append(b, '\n'))
	}
	if err != nil {
		stop()
		c.Close()
		return nil, nil, fmt.Errorf("status socket %s: %w", path, err)
	}
	return json.NewDecoder(bufio.NewReader(c)), &stoppingConn{Conn: c, stop: stop}, nil
}

// stoppingConn releases statusCall's context hook on Close.
type stoppingConn struct {
	net.Conn
	stop func() bool
}

func (c *stoppingConn) Close() error {
	c.stop()
	return c.Conn.Close()
}
