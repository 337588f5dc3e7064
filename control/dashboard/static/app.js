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

  fill("members", devices.map(d => el("tr", { "data-host": d.hostname, class: d.online ? "online" : "offline" },
    el("td", {}, el("span", { class: "dot" + (d.online ? " online" : ""), title: d.online ? "online" : "offline" })),
    el("td", {}, el("b", {}, d.hostname), el("div", { class: "muted small mono" }, d.id)),
    el("td", { class: "mono" }, d.ipv4, el("br"), el("span", { class: "muted" }, d.ipv6)),
    el("td", {}, d.child_prefixes.length ? d.child_prefixes.map(p => el("span", { class: "pill" }, p)) : el("span", { class: "muted" }, "—")),
    el("td", { class: "mono small" }, d.endpoints.length ? d.endpoints.join(" ") : "—"),
    el("td", {}, d.online ? "now" : ago(d.last_seen)))), 6, "No members yet: join one with a token below.");

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

function usable(t) {
  if (!t.reusable && t.used_at) return false;
  return !t.expires_at || Date.parse(t.expires_at) > Date.now();
}

// drawMesh draws the zone's members on a circle, every pair joined (each
// member has every other as a WireGuard peer), each member's child prefixes
// outside it, and the service in the middle with a dashed line to every
// member that holds a watch stream.
function drawMesh(devices) {
  const W = 720, H = 480, cx = W / 2, cy = H / 2, n = devices.length;
  const r = n <= 1 ? 0 : Math.min(165, 60 + 22 * n);
  const pos = devices.map((d, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(n, 1);
    return { d, a, x: cx + r * Math.cos(a), y: cy + r * Math.sin(a) };
  });
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "mesh picture", id: "mesh" });
  root.append(svg("rect", { x: 0, y: 0, width: W, height: H, rx: 10, fill: "#fbfcfe" }));
  if (n === 0) {
    root.append(svg("text", { x: cx, y: cy, "text-anchor": "middle", fill: "#6b7685", "font-size": 14 }, "No members in this zone yet"));
    document.getElementById("picture").replaceChildren(root);
    return;
  }
  const links = svg("g", {});
  if (n <= 40) {
    for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++)
      links.append(svg("line", { x1: pos[i].x, y1: pos[i].y, x2: pos[j].x, y2: pos[j].y, stroke: "#c7d2fe", "stroke-width": 1.5 }));
  }
  if (n > 1) {
    for (const p of pos) if (p.d.online)
      links.append(svg("line", { x1: cx, y1: cy, x2: p.x, y2: p.y, stroke: "#cbd5e1", "stroke-width": 1, "stroke-dasharray": "3 4" }));
    links.append(svg("circle", { cx, cy, r: 16, fill: "#111827" }),
      svg("text", { x: cx, y: cy + 32, "text-anchor": "middle", fill: "#6b7685", "font-size": 11 }, "service"));
  }
  root.append(links);
  for (const p of pos) {
    const g = svg("g", { class: "node", "data-host": p.d.hostname, "data-online": p.d.online ? "true" : "false" });
    const dx = Math.cos(p.a), dy = Math.sin(p.a);
    const prefixes = p.d.child_prefixes;
    if (prefixes.length) {
      const out = n === 1 ? { x: cx, y: cy + 95 } : { x: p.x + dx * 95, y: p.y + dy * 78 };
      prefixes.slice(0, 4).forEach((pf, k) => {
        const y = out.y + (k - (Math.min(prefixes.length, 4) - 1) / 2) * 24;
        g.append(svg("line", { x1: p.x, y1: p.y, x2: out.x, y2: y, stroke: "#c4b5fd", "stroke-width": 1.5 }));
        const w = 8 + 7.2 * pf.length;
        g.append(svg("rect", { x: out.x - w / 2, y: y - 10, width: w, height: 20, rx: 10, fill: "#f3edff", stroke: "#7c3aed", "stroke-width": 1 }),
          svg("text", { x: out.x, y: y + 4, "text-anchor": "middle", "font-size": 11.5, fill: "#5b21b6", "font-family": "ui-monospace, Menlo, Consolas, monospace", class: "prefix" }, pf));
      });
      if (prefixes.length > 4) g.append(svg("text", { x: out.x, y: out.y + 62, "text-anchor": "middle", "font-size": 11, fill: "#6b7685" }, `+${prefixes.length - 4} more`));
    }
    g.append(svg("circle", { cx: p.x, cy: p.y, r: 22, fill: p.d.online ? "#16a34a" : "#9aa3af", stroke: "#fff", "stroke-width": 3 }),
      svg("title", {}, `${p.d.hostname} ${p.d.ipv4} (${p.d.online ? "online" : "offline"})`));
    const below = dy > -0.3 || n === 1;
    const ly = below ? p.y + 38 : p.y - 42;
    g.append(svg("text", { x: p.x, y: ly, "text-anchor": "middle", "font-size": 13, "font-weight": 600, fill: "#1c2430", class: "host" }, p.d.hostname),
      svg("text", { x: p.x, y: ly + 15, "text-anchor": "middle", "font-size": 11.5, fill: "#6b7685", "font-family": "ui-monospace, Menlo, Consolas, monospace" }, p.d.ipv4));
    root.append(g);
  }
  document.getElementById("picture").replaceChildren(root);
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
  es.onerror = () => {
    badge.className = "live off"; badge.textContent = "reconnecting";
    // A stream refused for an expired session: call() sends us to the login page.
    call("GET", "/v1/info").catch(() => {});
  };
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token-form").addEventListener("submit", createToken);
  window.addEventListener("hashchange", () => { state.newToken = null; render(); });
  setInterval(() => { if (state.info) render(); }, 15000);
  load();
  live();
});
