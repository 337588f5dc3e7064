package control

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// taggedToken creates a reusable join token with tags through the admin API.
func (e *env) taggedToken(zone string, tags ...string) string {
	e.t.Helper()
	var jt api.JoinToken
	code, ae := e.call("POST", "/v1/tokens", e.admin, api.CreateTokenRequest{Zone: zone, Reusable: true, Tags: tags}, &jt)
	require.Nil(e.t, ae)
	require.Equal(e.t, http.StatusCreated, code)
	return jt.Token
}

// setPolicy PUTs a policy document and returns the answer.
func (e *env) setPolicy(zone, doc string) (api.ZonePolicy, *api.Error) {
	e.t.Helper()
	var p api.ZonePolicy
	_, ae := e.call("PUT", "/v1/zones/"+zone+"/policy", e.admin, doc, &p)
	return p, ae
}

func TestPolicyAdmin(t *testing.T) {
	e := newEnv(t)
	var p api.ZonePolicy
	code, ae := e.call("GET", "/v1/zones/default/policy", e.admin, nil, &p)
	require.Nil(t, ae, code)
	require.Equal(t, api.ZonePolicy{Zone: "default"}, p)

	// Refused documents: the code, the line, and nothing changes.
	before := e.state()
	for _, tt := range []struct {
		doc, code string
		line      int
	}{
		{"{\n\"rules\": [\n{\"from\": [\"tag:web\"], \"to\": [\"*:*\"]}]}", api.CodeUnknownTag, 3},
		{"{\"rules\": [{\"from\": [\"*\"],\n \"to\": [\"10.0.0.0/33:80\"]}]}", api.CodeInvalidSelector, 2},
		{"{\"rules\": [{\"from\": [\"*\"], \"to\": [\"node1:http\"]}]}", api.CodeInvalidPort, 1},
		{"{\"rules\": [\n\n{\"from\": [\"*\"], \"to\": [\"*:*\"], \"proto\": \"gre\"}]}", api.CodeInvalidProto, 3},
		{"{\"rules\": [", api.CodeInvalidPolicy, 1},
	} {
		_, ae := e.setPolicy("default", tt.doc)
		require.NotNil(t, ae, tt.doc)
		require.Equal(t, tt.code, ae.Code, ae.Message)
		require.Equal(t, tt.line, ae.Line, ae.Message)
	}
	require.Equal(t, before, e.state())

	doc := "{\"rules\": [{\"from\": [\"*\"], \"to\": [\"*:22\"], \"proto\": \"tcp\"}]}\n"
	set, ae := e.setPolicy("default", doc)
	require.Nil(t, ae)
	require.Equal(t, doc, set.Document)
	require.Greater(t, set.Revision, int64(0))

	// A refused document leaves the one in force.
	_, ae = e.setPolicy("default", `{"rules": [{"from": ["tag:nope"], "to": ["*:*"]}]}`)
	require.NotNil(t, ae)
	code, ae = e.call("GET", "/v1/zones/default/policy", e.admin, nil, &p)
	require.Nil(t, ae, code)
	require.Equal(t, doc, p.Document)
	require.Equal(t, set.Revision, p.Revision)

	// Admin only; zones must exist.
	code, _ = e.do("PUT", "/v1/zones/default/policy", "", doc)
	require.Equal(t, http.StatusUnauthorized, code)
	tok := e.joinToken("default", true)
	_, dev := e.mustRegister(tok, "laptop")
	code, _ = e.do("PUT", "/v1/zones/default/policy", dev.DeviceToken, doc)
	require.Equal(t, http.StatusUnauthorized, code)
	_, ae = e.setPolicy("nope", doc)
	require.Equal(t, api.CodeNotFound, ae.Code)

	code, ae = e.call("DELETE", "/v1/zones/default/policy", e.admin, nil, &p)
	require.Nil(t, ae, code)
	require.Empty(t, p.Document)
	require.Greater(t, p.Revision, set.Revision)

	// Token tags are checked and come back sorted.
	code, ae = e.call("POST", "/v1/tokens", e.admin, api.CreateTokenRequest{Tags: []string{"a:b"}}, nil)
	require.Equal(t, api.CodeInvalidSelector, ae.Code, code)
	var jt api.JoinToken
	_, ae = e.call("POST", "/v1/tokens", e.admin, api.CreateTokenRequest{Tags: []string{"web", "db", "web"}}, &jt)
	require.Nil(t, ae)
	require.Equal(t, []string{"db", "web"}, jt.Tags)
}

func TestPolicyCheckAPI(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken("default", true)
	_, n1 := e.mustRegister(tok, "node1", "172.24.0.0/24")
	_, lt := e.mustRegister(tok, "laptop")
	check := func(from, to, proto string) api.PolicyCheck {
		t.Helper()
		var res api.PolicyCheck
		code, ae := e.call("POST", "/v1/zones/default/policy/check", e.admin, api.PolicyCheckRequest{From: from, To: to, Proto: proto}, &res)
		require.Nil(t, ae, code)
		return res
	}
	res := check("laptop", "172.24.0.2:81", "")
	require.True(t, res.Allowed, "no policy: allowed")
	require.Contains(t, res.Reason, "no policy")

	_, ae := e.setPolicy("default", "{\"rules\": [\n {\"from\": [\"laptop\"], \"to\": [\"172.24.0.0/24:80\"], \"proto\": \"tcp\"}]}")
	require.Nil(t, ae)
	res = check("laptop", "172.24.0.2:80", "tcp")
	require.True(t, res.Allowed, res.Reason)
	require.Equal(t, 1, res.Rule)
	require.Equal(t, 2, res.Line)
	require.Equal(t, lt.IPv4.String(), res.Src)
	require.Equal(t, "node1", res.ToHost)

	res = check(lt.IPv4.String(), "172.24.0.2:81", "tcp")
	require.False(t, res.Allowed)
	require.Contains(t, res.Reason, "allows only tcp port 80")
	require.JSONEq(t, `{"from": ["laptop"], "to": ["172.24.0.2:81"], "proto": "tcp"}`, string(res.Missing))

	res = check("laptop", "node1:22", "tcp")
	require.False(t, res.Allowed, "the router's own address is not allowed")
	require.Equal(t, n1.IPv4.String(), res.Dst)

	code, ae := e.call("POST", "/v1/zones/default/policy/check", e.admin, api.PolicyCheckRequest{From: "ghost", To: "node1:22"}, nil)
	require.Equal(t, api.CodeNotFound, ae.Code, code)
	code, ae = e.call("POST", "/v1/zones/default/policy/check", e.admin, api.PolicyCheckRequest{From: "laptop", To: "node1"}, nil)
	require.Equal(t, api.CodeBadRequest, ae.Code, code)
}

// peerIDs returns the sorted ids of a snapshot's peers.
func peerIDs(ps []api.Peer) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.ID)
	}
	sort.Strings(out)
	return out
}

func sortedIDs(ids ...string) []string {
	sort.Strings(ids)
	return ids
}

// within reads the next change event, failing if it takes longer than d
// from start.
func (s *stream) within(start time.Time, d time.Duration) api.WatchEvent {
	s.t.Helper()
	ev := s.next()
	require.Less(s.t, time.Since(start), d, "event %+v", ev)
	return ev
}

func TestPolicyReachesWatchers(t *testing.T) {
	e := newEnv(t)
	plain := e.joinToken("default", true)
	web := e.taggedToken("default", "web")
	_, n1 := e.mustRegister(web, "node1", "172.24.0.0/24")
	_, n2 := e.mustRegister(plain, "node2", "172.28.0.0/24")
	_, lt := e.mustRegister(plain, "laptop")

	ls := e.watch("default", lt.DeviceToken, 0)
	snap := ls.next()
	require.Equal(t, sortedIDs(n1.DeviceID, n2.DeviceID, lt.DeviceID), peerIDs(snap.Peers))
	require.Nil(t, snap.Filter, "no policy: no filter")
	ns := e.watch("default", n1.DeviceToken, 0)
	require.Nil(t, ns.next().Filter)

	// A policy: the laptop reaches node1's Docker network on port 80, and
	// the web tier on port 22. node2 leaves both views.
	start := time.Now()
	set, ae := e.setPolicy("default", `{"tags": {"web": []}, "rules": [
		{"from": ["laptop"], "to": ["172.24.0.0/24:80"], "proto": "tcp"},
		{"from": ["laptop"], "to": ["tag:web:22"], "proto": "tcp"}]}`)
	require.Nil(t, ae)
	rm := ls.within(start, time.Second)
	require.Equal(t, api.EventRemove, rm.Type)
	require.Equal(t, n2.DeviceID, rm.Peer.ID)
	require.Equal(t, set.Revision, rm.Revision)
	f := ls.within(start, time.Second)
	require.Equal(t, api.EventFilter, f.Type)
	require.Equal(t, &api.Filter{Rules: []api.FilterRule{}}, f.Filter, "nothing may reach the laptop")

	require.Equal(t, api.EventRemove, ns.within(start, time.Second).Type)
	f = ns.within(start, time.Second)
	require.Equal(t, api.EventFilter, f.Type)
	laptop := []netip.Prefix{netip.PrefixFrom(lt.IPv4, 32), netip.PrefixFrom(lt.IPv6, 128)}
	require.Equal(t, []api.FilterRule{
		{Rule: 1, Src: laptop, Dst: []netip.Prefix{netip.MustParsePrefix("172.24.0.0/24")}, Proto: "tcp", Ports: []api.PortRange{{First: 80, Last: 80}}},
		{Rule: 2, Src: laptop, Dst: []netip.Prefix{netip.PrefixFrom(n1.IPv4, 32), netip.PrefixFrom(n1.IPv6, 128)}, Proto: "tcp", Ports: []api.PortRange{{First: 22, Last: 22}}},
	}, f.Filter.Rules)
	_, ok := f.Filter.Allows(lt.IPv4, netip.MustParseAddr("172.24.0.2"), api.ProtoTCP, 81)
	require.False(t, ok)

	// A new member of the web tier appears in the laptop's view only.
	_, n3 := e.mustRegister(web, "node3")
	up := ls.next()
	require.Equal(t, api.EventUpsert, up.Type)
	require.Equal(t, n3.DeviceID, up.Peer.ID)
	// node2's endpoints are nobody's business; node1's reach the laptop.
	eps := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.2:51820")}
	_, ae = e.call("PATCH", "/v1/devices/self", n2.DeviceToken, api.UpdateSelfRequest{Endpoints: &eps}, nil)
	require.Nil(t, ae)
	_, ae = e.call("PATCH", "/v1/devices/self", n1.DeviceToken, api.UpdateSelfRequest{Endpoints: &eps}, nil)
	require.Nil(t, ae)
	up = ls.next()
	require.Equal(t, api.EventUpsert, up.Type)
	require.Equal(t, n1.DeviceID, up.Peer.ID)
	self := ns.next()
	require.Equal(t, n1.DeviceID, self.Peer.ID, "a member gets its own changes")
	ls.quiet()
	ns.quiet()

	// Resuming in a zone with a policy starts over with the member's view.
	rs := e.watch("default", lt.DeviceToken, up.Revision)
	snap = rs.next()
	require.Equal(t, api.EventSnapshot, snap.Type)
	require.Equal(t, sortedIDs(n1.DeviceID, n3.DeviceID, lt.DeviceID), peerIDs(snap.Peers))
	require.Equal(t, &api.Filter{Rules: []api.FilterRule{}}, snap.Filter)
	rs.cancel()

	// Removing the policy gives everything back, and says so.
	start = time.Now()
	code, ae := e.call("DELETE", "/v1/zones/default/policy", e.admin, nil, nil)
	require.Nil(t, ae, code)
	up = ls.within(start, time.Second)
	require.Equal(t, api.EventUpsert, up.Type)
	require.Equal(t, n2.DeviceID, up.Peer.ID)
	f = ls.within(start, time.Second)
	require.Equal(t, api.EventFilter, f.Type)
	require.Nil(t, f.Filter, "no policy: accept everything")
	// A resume from the policy change itself (whose events may have been
	// cut short) starts over; after it, the stream is shared again.
	rs = e.watch("default", lt.DeviceToken, f.Revision)
	snap = rs.next()
	require.Equal(t, api.EventSnapshot, snap.Type)
	require.Len(t, snap.Peers, 4)
	require.Nil(t, snap.Filter)
	rs.cancel()
	_, ae = e.call("PATCH", "/v1/devices/self", n2.DeviceToken, api.UpdateSelfRequest{Endpoints: &[]netip.AddrPort{}}, nil)
	require.Nil(t, ae)
	up = ls.next()
	rs = e.watch("default", lt.DeviceToken, up.Revision)
	require.Equal(t, api.EventHeartbeat, (<-rs.events).Type)
}

func TestPolicyDeletedDeviceLeavesViews(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken("default", true)
	_, a := e.mustRegister(tok, "a")
	_, b := e.mustRegister(tok, "b")
	_, c := e.mustRegister(tok, "c")
	_, ae := e.setPolicy("default", `{"rules": [{"from": ["a"], "to": ["b:*"]}]}`)
	require.Nil(t, ae)
	as := e.watch("default", a.DeviceToken, 0)
	snap := as.next()
	require.Equal(t, sortedIDs(a.DeviceID, b.DeviceID), peerIDs(snap.Peers))
	require.Empty(t, snap.Filter.Rules)
	bs := e.watch("default", b.DeviceToken, 0)
	snap = bs.next()
	require.Len(t, snap.Filter.Rules, 1)
	cs := e.watch("default", c.DeviceToken, 0)
	snap = cs.next()
	require.Equal(t, []string{c.DeviceID}, peerIDs(snap.Peers), "c sees only itself")

	code, ae := e.call("DELETE", "/v1/devices/"+b.DeviceID, e.admin, nil, nil)
	require.Nil(t, ae, code)
	rm := as.next()
	require.Equal(t, api.EventRemove, rm.Type)
	require.Equal(t, b.DeviceID, rm.Peer.ID)
	rm = bs.next()
	require.Equal(t, api.EventRemove, rm.Type, "b is told about its own removal")
	<-bs.done
	cs.quiet()

	// A new device reuses the slot: it is not in a's view.
	_, d := e.mustRegister(tok, "d")
	as.quiet()
	snap = e.watch("default", d.DeviceToken, 0).next()
	require.Equal(t, []string{d.DeviceID}, peerIDs(snap.Peers))
}

func TestPolicyObserverSeesWholeZone(t *testing.T) {
	e := newEnv(t)
	web := e.taggedToken("default", "web")
	_, a := e.mustRegister(web, "a")
	var dev api.Device
	_, ae := e.call("GET", "/v1/devices/"+a.DeviceID, e.admin, nil, &dev)
	require.Nil(t, ae)
	require.Equal(t, []string{"web"}, dev.Tags, "the device carries its token's tags")

	_, ae = e.setPolicy("default", `{"tags": {"web": []}, "rules": []}`)
	require.Nil(t, ae)
	obs, err := e.srv.hub.observe(t.Context(), "default")
	require.NoError(t, err)
	defer e.srv.hub.unsubscribe(obs)
	mem, err := e.srv.hub.subscribeAs(t.Context(), "default", a.DeviceID)
	require.NoError(t, err)
	defer e.srv.hub.unsubscribe(mem)

	_, b := e.mustRegister(web, "b")
	e.srv.hub.updateNow("default") // the fan-out is done when it returns
	ev, ok := recvEvent(t, obs)
	require.True(t, ok)
	var we api.WatchEvent
	require.NoError(t, json.Unmarshal(ev.line, &we))
	require.Equal(t, b.DeviceID, we.Peer.ID, "an observer sees every change")
	require.Zero(t, pending(mem), "a member that may reach nothing sees nothing")

	_, ae = e.setPolicy("default", `{"tags": {"web": []}, "rules": [{"from": ["tag:web"], "to": ["tag:web:*"]}]}`)
	require.Nil(t, ae)
	e.srv.hub.updateNow("default")
	require.Zero(t, pending(obs), "policy changes are not an observer's business")
	ev, ok = recvEvent(t, mem)
	require.True(t, ok)
	lines := bytes.Split(bytes.TrimSpace(ev.line), []byte("\n"))
	require.Len(t, lines, 2, "b's upsert and a's filter in one event: %s", ev.line)
	require.NoError(t, json.Unmarshal(lines[0], &we))
	require.Equal(t, api.EventUpsert, we.Type)
	require.Equal(t, b.DeviceID, we.Peer.ID)
	require.NoError(t, json.Unmarshal(lines[1], &we))
	require.Equal(t, api.EventFilter, we.Type)
	require.Len(t, we.Filter.Rules, 1)
}
