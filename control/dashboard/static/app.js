// wiremesh dashboard: plain JavaScript, no build step. Everything shown is
// fetched from /ui/api (the admin API, forwarded with the session) and
// refreshed when /ui/events reports a change.
"use strict";

const state = { info: null, zones: [], devices: [], prefixes: [], tokens: [], zone: null, newToken: null };
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const k of kids.flat()) if (k != null) e.append(k instanceof Node ? k : String(k));
  return e;
}

function svg(tag, attrs, ...kids) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids.flat()) if (k != null) e.append(k instanceof Node ? k : String(k));
  return e;
}

async function call(method, path, body) {
  const opts = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") opts.headers["X-Wiremesh-Dashboard"] = "1";
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch("/ui/api" + path, opts);
  if (r.status === 401) { location.href = "/ui/login"; throw new Error("signed out"); }
  if (r.status === 204) return null;
  const j = await r.json();
  if (!r.ok) throw new Error(j.message || ("HTTP " + r.status));
  return j;
}

function showError(err) {
  const p = document.getElementById("error");
  p.hidden = !err;
  p.textContent = err ? String(err.message || err) : "";
}

let loading = null, again = false;
async function load() {
  if (loading) { again = true; return loading; }
  loading = (async () => {
    try {
      const [info, zones, devices, prefixes, tokens] = await Promise.all([
        call("GET", "/v1/info"), call("GET", "/v1/zones"), call("GET", "/v1/devices"),
        call("GET", "/v1/prefixes"), call("GET", "/v1/tokens")]);
      Object.assign(state, { info, zones, devices, prefixes, tokens });
      showError(null);
      render();
    } catch (e) {
      showError(e);
    }
  })();
  await loading;
  loading = null;
  if (again) { again = false; return load(); }
}

let timer = null;
function soon() { clearTimeout(timer); timer = setTimeout(load, 80); }
// Stats reports arrive every 30 s from every member: reload at most once a
// second for them.
let statsTimer = null;
function soonStats() { if (!statsTimer) statsTimer = setTimeout(() => { statsTimer = null; load(); }, 1000); }

function pickZone() {
  const m = /zone=([a-z0-9-]+)/.exec(location.hash);
  const names = state.zones.map(z => z.name);
  if (m && names.includes(m[1])) return m[1];
  if (names.includes(state.info && state.info.default_zone)) return state.info.default_zone;
  return names[0] || null;
}

function ago(ts) {
  if (!ts) return "—";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(ts)) / 1000));
  if (s < 5) return "just now";
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
}

function when(ts) {
  if (!ts) return "—";
  const d = new Date(ts);
  return d.toLocaleDateString(undefined, { month: "short", day: "numeric" }) + " " +
    d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

function fill(id, rows, cols, emptyText) {
  const tb = document.querySelector("#" + id + " tbody");
  tb.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colSpan: cols }, emptyText))]));
}

function render() {
  state.zone = pickZone();
  document.getElementById("version").textContent = state.info ? "service " + state.info.version : "";
  const zone = state.zone;
  const devices = state.devices.filter(d => d.zone === zone);
  const prefixes = state.prefixes.filter(p => p.zone === zone);
  const tokens = state.tokens.filter(t => t.zone === zone);

  document.getElementById("zones").replaceChildren(...state.zones.map(z =>
    el("a", { href: "#zone=" + z.name, class: z.name === zone ? "active" : "", "data-zone": z.name }, z.name)));

  const online = devices.filter(d => d.online).length;
  const card = (n, l, id) => el("div", { class: "card", "data-card": id }, el("div", { class: "n" }, n), el("div", { class: "l" }, l));
  document.getElementById("summary").replaceChildren(
    card(devices.length, "members", "members"), card(online, "online", "online"),
    card(prefixes.length, "child prefixes", "prefixes"), card(tokens.filter(usable).length, "usable join tokens", "tokens"));

  const hostById = Object.fromEntries(state.devices.map(d => [d.id, d.hostname]));
  fill("members", devices.map(d => el("tr", { "data-host": d.hostname, class: d.online ? "online" : "offline" },
    el("td", {}, el("span", { class: "dot" + (d.online ? " online" : ""), title: d.online ? "online" : "offline" })),
    el("td", {}, el("b", {}, d.hostname), el("div", { class: "muted small mono" }, d.id)),
    el("td", { class: "mono" }, d.ipv4, el("br"), el("span", { class: "muted" }, d.ipv6)),
    el("td", {}, d.child_prefixes.length ? d.child_prefixes.map(p => el("span", { class: "pill" }, p)) : el("span", { class: "muted" }, "—")),
    el("td", { class: "mono small endpoints" }, d.endpoints.length ? d.endpoints.map(e => el("div", {}, e)) : "—"),
    statsCell(d, hostById),
    el("td", { class: "nowrap" }, d.online ? "now" : ago(d.last_seen)))), 7, "No members yet: join one with a token below.");

  const byId = Object.fromEntries(devices.map(d => [d.id, d]));
  fill("prefixes", prefixes.map(p => el("tr", { "data-prefix": p.prefix },
    el("td", {}, el("span", { class: "pill" }, p.prefix)),
    el("td", {}, el("span", { class: "dot" + (byId[p.device_id] && byId[p.device_id].online ? " online" : "") }), " ", p.hostname),
    el("td", { class: "mono small muted" }, p.device_id))), 3, "No child prefixes in this zone.");

  fill("tokens", tokens.map(t => el("tr", { "data-token": t.id },
    el("td", { class: "mono" }, t.id),
    el("td", {}, t.reusable ? "reusable" : "single use"),
    el("td", {}, t.expires_at ? (Date.parse(t.expires_at) < Date.now() ? "expired" : when(t.expires_at)) : "never"),
    el("td", {}, t.used_at ? when(t.used_at) : "—"),
    el("td", {}, when(t.created_at)),
    el("td", {}, el("button", { class: "danger", type: "button", onclick: () => revoke(t.id), "data-revoke": t.id }, "Revoke")))),
  6, "No join tokens for this zone.");

  const count = {};
  for (const d of state.devices) count[d.zone] = (count[d.zone] || 0) + 1;
  fill("zone-table", state.zones.map(z => el("tr", { "data-zone": z.name },
    el("td", {}, el("b", {}, z.name)), el("td", { class: "mono" }, z.ipv4_pool), el("td", { class: "mono" }, z.ipv6_pool),
    el("td", {}, z.allow_exit_nodes ? "allowed" : "no"), el("td", {}, count[z.name] || 0), el("td", {}, when(z.created_at)))), 6, "No zones.");

  const nt = document.getElementById("new-token");
  nt.hidden = !state.newToken;
  if (state.newToken) {
    document.getElementById("new-token-zone").textContent = state.newToken.zone;
    document.getElementById("new-token-value").textContent = state.newToken.token;
  }
  drawMesh(devices);
}

// statsCell summarizes what a member last reported of its peers: how many
// it reaches directly or through the relay, its most recent handshake and
// the bytes in and out through the tunnel; each peer in the tooltip.
function statsCell(d, hostById) {
  const st = d.stats;
  if (!st) return el("td", { class: "stats small muted", "data-stats": "none" }, "no report yet");
  const n = { direct: 0, relay: 0, none: 0 };
  let hs = null, rx = 0, tx = 0;
  for (const p of st.peers) {
    n[p.path || "none"]++;
    if (p.last_handshake && (!hs || Date.parse(p.last_handshake) > Date.parse(hs))) hs = p.last_handshake;
    rx += p.rx_bytes; tx += p.tx_bytes;
  }
  const paths = [];
  if (n.direct) paths.push(el("span", { class: "path direct" }, n.direct + " direct"));
  if (n.relay) paths.push(el("span", { class: "path relay" }, n.relay + " relay"));
  if (n.none) paths.push(el("span", { class: "path none" }, n.none + " no path"));
  if (!st.peers.length) paths.push(el("span", { class: "muted" }, "no peers"));
  const title = st.peers.map(p => `${hostById[p.device_id] || p.device_id}: ${p.path || "no path"}, ` +
    `handshake ${p.last_handshake ? ago(p.last_handshake) : "never"}, in ${bytes(p.rx_bytes)}, out ${bytes(p.tx_bytes)}`).join("\n") +
    `\n(reported ${ago(st.reported_at)})`;
  return el("td", { class: "stats small", title, "data-stats": "report", "data-direct": n.direct, "data-relay": n.relay,
      "data-handshake": hs || "", "data-rx": rx, "data-tx": tx },
    el("div", { class: "paths" }, paths),
    el("div", { class: "muted handshake" }, hs ? "handshake " + ago(hs) : "no handshake"),
    el("div", { class: "muted nowrap mono traffic" }, "↓ " + bytes(rx) + "  ↑ " + bytes(tx)));
}

function bytes(n) {
  if (n < 1024) return n + " B";
  const u = ["KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
  return n.toFixed(n < 10 ? 1 : 0) + " " + u[i];
}

// pathBetween is how a and b reach each other, as either last reported
// ("direct" wins over "relay"); "" when neither knows.
function pathBetween(a, b) {
  const of = (x, y) => { const p = x.stats && x.stats.peers.find(p => p.device_id === y.id); return (p && p.path) || ""; };
  const pa = of(a, b), pb = of(b, a);
  return pa === "direct" || pb === "direct" ? "direct" : pa || pb;
}

function usable(t) {
  if (!t.reusable && t.used_at) return false;
  return !t.expires_at || Date.parse(t.expires_at) > Date.now();
}

// drawMesh draws the zone's members on a circle, every pair joined (each
// member has every other as a WireGuard peer), each member's name, address
// and child prefixes on its outer side. The view box is fitted to what was
// drawn.
function drawMesh(devices) {
  const n = devices.length, r = n <= 1 ? 0 : Math.min(200, 70 + 26 * n);
  const root = svg("svg", { role: "img", "aria-label": "mesh picture", id: "mesh" });
  const bg = svg("rect", { rx: 10, fill: "#fbfcfe" });
  const content = svg("g", {});
  root.append(bg, content);
  const box = document.getElementById("picture");
  box.replaceChildren(root);
  if (n === 0) {
    content.append(svg("text", { x: 0, y: 0, "text-anchor": "middle", fill: "#6b7685", "font-size": 14 }, "No members in this zone yet"));
    fit(root, bg, content, 420, 220);
    return;
  }
  const pos = devices.map((d, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / n;
    return { d, x: r * Math.cos(a), y: r * Math.sin(a), dx: Math.cos(a), dy: Math.sin(a) };
  });
  const links = svg("g", {});
  if (n <= 40) {
    for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++)
    {
      const path = pathBetween(pos[i].d, pos[j].d);
      const style = { direct: { stroke: "#16a34a" }, relay: { stroke: "#f59e0b", "stroke-dasharray": "6 4" } }[path] || { stroke: "#c7d2fe" };
      links.append(svg("line", { x1: pos[i].x, y1: pos[i].y, x2: pos[j].x, y2: pos[j].y, "stroke-width": 1.5, ...style,
        "data-path": path, "data-pair": pos[i].d.hostname + " " + pos[j].d.hostname }));
    }
  }
  content.append(links);
  const mono = "ui-monospace, Menlo, Consolas, monospace";
  for (const p of pos) {
    const g = svg("g", { class: "node", "data-host": p.d.hostname, "data-online": p.d.online ? "true" : "false" });
    g.append(svg("circle", { cx: p.x, cy: p.y, r: 20, fill: p.d.online ? "#16a34a" : "#9aa3af", stroke: "#fff", "stroke-width": 3 }),
      svg("title", {}, `${p.d.hostname} ${p.d.ipv4} (${p.d.online ? "online" : "offline"})`));
    // Where the labels go: below, above, or beside the node.
    const side = n === 1 || p.dy > 0.5 ? "below" : p.dy < -0.5 ? "above" : p.dx > 0 ? "right" : "left";
    const anchor = side === "right" ? "start" : side === "left" ? "end" : "middle";
    const tx = side === "right" ? p.x + 30 : side === "left" ? p.x - 30 : p.x;
    const prefixes = p.d.child_prefixes.slice(0, 4);
    if (p.d.child_prefixes.length > 4) prefixes.push(`+${p.d.child_prefixes.length - 4} more`);
    // Lines of the label block, outward from the node.
    const label = [{ t: p.d.hostname, cls: "host" }, { t: p.d.ipv4, cls: "addr" }];
    const pills = prefixes.map(t => ({ t, cls: "prefix" }));
    const lines = side === "above" ? [...pills, ...label] : [...label, ...pills];
    let y = side === "below" ? p.y + 38 : side === "above" ? p.y - 30 - 20 * (lines.length - 1) - 4 * pills.length : p.y - 4;
    for (const l of lines) {
      if (l.cls === "prefix") {
        y += 4;
        const w = 12 + 7.1 * l.t.length;
        const x0 = anchor === "start" ? tx : anchor === "end" ? tx - w : tx - w / 2;
        g.append(svg("rect", { x: x0, y: y - 13, width: w, height: 19, rx: 9.5, fill: "#f3edff", stroke: "#a78bfa", "stroke-width": 1 }),
          svg("text", { x: x0 + w / 2, y: y + 1, "text-anchor": "middle", "font-size": 11.5, fill: "#5b21b6", "font-family": mono, class: "prefix" }, l.t));
      } else if (l.cls === "host") {
        g.append(svg("text", { x: tx, y, "text-anchor": anchor, "font-size": 14, "font-weight": 600, fill: "#1c2430", class: "host" }, l.t));
      } else {
        g.append(svg("text", { x: tx, y: y - 2, "text-anchor": anchor, "font-size": 11.5, fill: "#6b7685", "font-family": mono }, l.t));
      }
      y += 20;
    }
    content.append(g);
  }
  fit(root, bg, content, 460, 300);
}

// fit sets the view box around what was drawn (at least minW × minH).
function fit(root, bg, content, minW, minH) {
  const b = content.getBBox(), pad = 18;
  const w = Math.max(minW, b.width + 2 * pad), h = Math.max(minH, b.height + 2 * pad);
  const x = b.x + b.width / 2 - w / 2, y = b.y + b.height / 2 - h / 2;
  root.setAttribute("viewBox", `${x} ${y} ${w} ${h}`);
  for (const [k, v] of Object.entries({ x, y, width: w, height: h })) bg.setAttribute(k, v);
}

async function createToken(ev) {
  ev.preventDefault();
  const body = {
    zone: state.zone,
    reusable: document.getElementById("token-reusable").checked,
    expires_in_seconds: Number(document.getElementById("token-expires").value),
  };
  try {
    const t = await call("POST", "/v1/tokens", body);
    state.newToken = t;
    await load();
  } catch (e) { showError(e); }
}

async function revoke(id) {
  try {
    await call("DELETE", "/v1/tokens/" + encodeURIComponent(id));
    if (state.newToken && state.newToken.id === id) state.newToken = null;
    await load();
  } catch (e) { showError(e); }
}

function live() {
  const badge = document.getElementById("live");
  const es = new EventSource("/ui/events");
  const on = () => { badge.className = "live on"; badge.textContent = "live"; };
  es.addEventListener("hello", () => { on(); load(); });
  es.addEventListener("change", () => { on(); soon(); });
  es.addEventListener("presence", () => { on(); soon(); });
  es.addEventListener("stats", () => { on(); soonStats(); });
  es.onerror = () => {
    badge.className = "live off"; badge.textContent = "reconnecting";
    // A stream refused for an expired session: call() sends us to the login page.
    call("GET", "/v1/info").catch(() => {});
  };
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token-form").addEventListener("submit", createToken);
  window.addEventListener("hashchange", () => { state.newToken = null; render(); });
  // A safety net for updates lost while the event stream was slow or
  // reconnecting; it also refreshes the "last seen" times.
  setInterval(load, 30000);
  load();
  live();
});
