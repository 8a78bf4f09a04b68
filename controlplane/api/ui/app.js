// aixds dashboard: renders the snapshots that GET /v1/events streams (server-sent events).
// Plain DOM, no framework, nothing fetched from elsewhere. Every value from the server is
// put in the page as text (never as HTML). Writes (promote / rollback / abort) call the
// API with the bearer token typed in the header; without one the API's refusal is shown.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "aixds.token";

// h("td", {class: "x", title: "y"}, "text", child, ...): a new element.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const pct = (x, digits = 0) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(digits)}%`);
const gib = (b) => (b / 2 ** 30).toFixed(1);
const ago = (t, now) => (t ? `${Math.max(0, now - t).toFixed(0)} s ago` : "–");
const clock = (t) => new Date(t * 1000).toLocaleTimeString();
const healthClass = (hl) => ({ HEALTHY: "ok", DEGRADED: "warn", DRAINING: "drain", UNHEALTHY: "bad" })[hl] || "";
const stateClass = (s) => ({ ready: "ok", warming: "warn", loading: "info", sleeping: "idle", unloading: "drain" })[s] || "";
const regionClass = (s) => ({ live: "ok", demoted: "warn", lost: "bad" })[s] || "";

// A bar for a 0..1 value; the colour turns at 75% and 90%.
function bar(x, label) {
  const v = Math.max(0, Math.min(1, x || 0));
  const cls = v >= 0.9 ? "bad" : v >= 0.75 ? "warn" : "ok";
  return h("span", { class: "bar", title: label || pct(v) },
    h("span", { class: `fill ${cls}`, style: `width:${(100 * v).toFixed(0)}%` }),
    h("span", { class: "barlabel" }, label || pct(v)));
}

// -- fleet ----------------------------------------------------------------------------------

function shortGroup(name, groups) {
  const g = groups.find((x) => x.name === name);
  return g && g.region ? `${g.role}@${g.region}` : name;
}

function replicaRow(r, groups) {
  const flags = [];
  if (!r.fresh) flags.push(h("span", { class: "tag bad" }, "stale"));
  if (r.draining) flags.push(h("span", { class: "tag drain" }, "draining"));
  if (r.sleeping) flags.push(h("span", { class: "tag idle" }, "sleeping"));
  if (r.lost.length) flags.push(h("span", { class: "tag bad", title: "the server stopped answering; kept UNHEALTHY in EDS" }, `server lost: ${r.lost.join(", ")}`));
  const gpus = r.gpus.length
    ? r.gpus.map((g) => h("div", { class: "gpu" },
        bar(g.util, `${pct(g.util)}`),
        h("span", { class: "mem" }, g.mem_total ? ` ${gib(g.mem_used)}/${gib(g.mem_total)} GiB` : ""),
        g.throttled ? h("span", { class: "tag warn" }, "throttled") : null,
        g.faulty ? h("span", { class: "tag bad", title: g.fault }, `fault: ${g.fault || "?"}`) : null))
    : h("span", { class: "muted" }, "no GPU data");
  // per Envoy group: the main cluster's endpoint, then (smaller) its session-affinity twin
  const eds = Object.entries(r.eds).map(([group, eps]) =>
    h("div", { class: "eds" }, h("span", { class: "group" }, shortGroup(group, groups)), " ",
      eps.map((e) => {
        const aff = e.cluster.endsWith("#affinity");
        return h("span", { class: aff ? "ep aff" : "ep", title: `${group}: ${e.cluster} ${e.health}` },
          `${aff ? "aff " : ""}w${e.weight} p${e.priority} `,
          aff ? h("span", { class: `dot ${healthClass(e.health)}` })
            : h("span", { class: `tag ${healthClass(e.health)}` }, e.health), " ");
      })));
  const models = Object.keys(r.share);
  const share = Object.entries(r.share).map(([m, p]) =>
    h("div", { title: `${p.toFixed(1)}% of ${m}'s requests in the Envoys' last load report` }, `${p.toFixed(1)}%`,
      models.length > 1 ? h("span", { class: "muted" }, ` ${m}`) : ""));
  return h("tr", { class: r.fresh ? "" : "stale", dataset: { replica: r.id } },
    h("td", { class: "rid" }, h("div", {}, r.id.split("/").slice(1).join("/") || r.id),
      h("div", { class: "muted small" }, `${r.address} · ${r.kind}`), flags),
    h("td", { class: "models" }, r.models.map((m) =>
      h("span", { class: `tag ${stateClass(m.state)}`, title: m.state }, `${m.name}@${m.version} ${m.state}`)),
      r.failures.map((f) => h("div", { class: "tag bad small" }, f))),
    h("td", { class: "gpus" }, gpus),
    h("td", { class: "num queue" }, `${r.queue_waiting.toFixed(0)} / ${r.running.toFixed(0)}`),
    h("td", { class: "kv" }, bar(r.kv_cache)),
    h("td", { class: "num speed" }, r.speed.toFixed(2)),
    h("td", { class: "eds-cell" }, eds.length ? eds : h("span", { class: "muted" }, "not in EDS")),
    h("td", { class: "num share" }, share.length ? share : "–"));
}

function renderFleet(s) {
  const box = $("fleet");
  const regions = s.regions.map((reg) => {
    const rows = [];
    for (const z of reg.zones) {
      rows.push(h("tr", { class: "zone" }, h("th", { colspan: 8 }, `zone ${z.name}`)));
      for (const n of z.nodes) {
        rows.push(h("tr", { class: "node", dataset: { node: n.name } },
          h("th", { colspan: 8 }, `node ${n.name}`, n.drained ? h("span", { class: "tag drain" }, "drained") : null)));
        for (const r of n.replicas) rows.push(replicaRow(r, s.groups));
      }
    }
    const count = reg.zones.reduce((a, z) => a + z.nodes.reduce((b, n) => b + n.replicas.length, 0), 0);
    return h("div", { class: "region", dataset: { region: reg.name } },
      h("h3", {}, `region ${reg.name} `, h("span", { class: `tag ${regionClass(reg.state)}` }, reg.state),
        reg.name === s.local_region ? h("span", { class: "muted small" }, " this control plane's region ·") : null,
        h("span", { class: "muted small" }, ` ${count} replica${count === 1 ? "" : "s"}`)),
      rows.length
        ? h("table", { class: "fleet" },
            h("thead", {}, h("tr", {}, [["replica"], ["models"], ["GPU", "utilisation, memory, throttling, faults"],
              ["queue", "requests waiting / running"], ["KV", "KV-cache use"], ["speed", "measured decode speed (1 = reference GPU)"],
              ["EDS per Envoy group", "weight, priority and health each Envoy group has (aff: its session-affinity cluster)"],
              ["share", "share of the model's requests the Envoys sent it in their last load report (LRS, about 1 s)"]].map(([t, title]) => h("th", { title }, t)))),
            h("tbody", {}, rows))
        : h("p", { class: "muted" }, "no replicas"));
  });
  box.replaceChildren(...(regions.length ? regions : [h("p", { class: "muted" }, "no replica has reported yet")]));
}

// -- models and actions ---------------------------------------------------------------------

const actionBoxes = new Map(); // model -> element kept across renders (inputs keep their text)

function showNotice(text, kind) {
  const n = $("notice");
  n.hidden = false;
  n.className = `notice ${kind}`;
  n.textContent = text;
}

async function write(model, action, body) {
  const token = $("token").value.trim();
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const url = `/v1/rollouts/${encodeURIComponent(model)}/${action}`;
  let res;
  try {
    res = await fetch(url, { method: "POST", headers, body: JSON.stringify(body || {}) });
  } catch (err) {
    showNotice(`${action} ${model}: cannot reach the API (${err})`, "bad");
    return;
  }
  let doc = {};
  try { doc = await res.json(); } catch (_) { /* not JSON: keep the status */ }
  if (res.ok) {
    const ro = doc.rollout || {};
    showNotice(`${action} ${model}: done (revision ${doc.revision}, stable ${ro.stable}` +
      `${ro.canary ? `, canary ${ro.canary} ${ro.canary_percent}%` : ""}; ` +
      `Envoys ${doc.envoys ? `${doc.envoys.current}/${doc.envoys.total}` : "?"} current)`, "ok");
  } else {
    showNotice(`${action} ${model} refused: ${res.status} ${doc.error || res.statusText}: ${doc.detail || ""}`, "bad");
  }
}

function actionBox(model) {
  let box = actionBoxes.get(model);
  if (box) return box;
  const reason = h("input", { type: "text", placeholder: "rollback reason", dataset: { testid: `reason-${model}` } });
  box = h("div", { class: "actions" },
    h("button", { type: "button", dataset: { action: "promote", model }, onclick: () => write(model, "promote") }, "Promote"),
    h("button", { type: "button", class: "danger", dataset: { action: "rollback", model },
      onclick: () => write(model, "rollback", { reason: reason.value }) }, "Rollback"),
    h("button", { type: "button", dataset: { action: "abort", model }, onclick: () => write(model, "abort") }, "Abort canary"),
    reason);
  actionBoxes.set(model, box);
  return box;
}

function renderModels(s) {
  const cards = s.models.map((m) => {
    const ro = m.rollout;
    let state = `stable ${ro.stable || "–"}`;
    if (ro.canary) state += ` · canary ${ro.canary} at ${ro.canary_percent}%`;
    if (ro.fallback) state += ` · serving ${ro.fallback} (fallback)`;
    const lr = ro.last_rollback;
    const health = ro.health
      ? h("div", { class: `small ${ro.health.rollback ? "bad" : ""}` },
          `canary errors ${pct(ro.health.canary.error_rate, 1)} of ${ro.health.canary.requests}, ` +
          `stable ${pct(ro.health.stable.error_rate, 1)} of ${ro.health.stable.requests}` +
          (ro.health.reason ? ` — ${ro.health.reason}` : ""))
      : null;
    const routes = s.groups.filter((g) => g.routes[m.model]).map((g) =>
      h("div", { class: "small" }, `${shortGroup(g.name, s.groups)}: `,
        Object.entries(g.routes[m.model]).map(([c, w]) => `${c} ${w.toFixed(1)}%`).join(", ")));
    const p = m.placement;
    const pin = p.pinned
      ? `pinned ${Object.entries(p.pinned.min_resident).map(([r, n]) => `${n} in ${r || "every region"}`).join(", ") || "nowhere"}` +
        (p.pinned.max_replicas ? `, at most ${p.pinned.max_replicas}` : "") +
        (p.pinned.fallback ? `, fallback ${p.pinned.fallback}` : "")
      : "not pinned";
    return h("div", { class: "card", dataset: { model: m.model } },
      h("h3", {}, m.model, " ", h("span", { class: `tag ${ro.canary ? "info" : "ok"}`, dataset: { testid: "rollout-state" } }, state)),
      h("table", { class: "versions" },
        h("thead", {}, h("tr", {}, ["version", "role", "traffic", "serving / ready / total"].map((t) => h("th", {}, t)))),
        h("tbody", {}, m.versions.map((v) => h("tr", { dataset: { version: v.version } },
          h("td", {}, v.version),
          h("td", {}, h("span", { class: `tag ${{ stable: "ok", canary: "info", draining: "drain" }[v.role] || ""}` }, v.role)),
          h("td", { class: "num" }, `${v.traffic_percent.toFixed(1)}%`),
          h("td", { class: "num" }, `${v.replicas.serving} / ${v.replicas.ready} / ${v.replicas.total}`))))),
      Object.keys(ro.draining || {}).length
        ? h("div", { class: "small drain" }, "draining versions: ",
            Object.entries(ro.draining).map(([v, d]) => `${v} (${d.phase})`).join(", "))
        : null,
      health,
      lr ? h("div", { class: "small warn" }, `last rollback ${lr.from_version} → ${lr.to_version} (${lr.trigger}, ${clock(lr.at)}): ${lr.reason}`) : null,
      h("div", { class: "small" }, h("b", {}, "routes "), routes.length ? routes : "none"),
      h("div", { class: "small" }, h("b", {}, "placement "), pin,
        p.awake.length || p.sleeping.length ? ` · ${p.awake.length} awake, ${p.sleeping.length} asleep` : "",
        p.reasons.map((r) => h("div", { class: "muted" }, r))),
      actionBox(m.model));
  });
  $("models").replaceChildren(...(cards.length ? cards : [h("p", { class: "muted" }, "no model is served")]));
}

function renderGroups(s) {
  $("groups").replaceChildren(s.groups.length
    ? h("table", {},
        h("thead", {}, h("tr", {}, ["group", "Envoys", "NACKs", "published"].map((t) => h("th", {}, t)))),
        h("tbody", {}, s.groups.map((g) => h("tr", { dataset: { group: g.name } },
          h("td", { title: g.name }, shortGroup(g.name, s.groups), h("div", { class: "muted small" }, g.name)),
          h("td", {}, g.envoys.length ? g.envoys.join(", ") : h("span", { class: "tag warn" }, "none connected")),
          h("td", { class: g.nacks ? "bad" : "" }, String(g.nacks)),
          h("td", {}, ago(g.published_at, s.at))))))
    : h("p", { class: "muted" }, "no Envoy has connected yet"));
}

function renderDrains(s) {
  $("drains").replaceChildren(s.drains.length
    ? h("ul", {}, s.drains.map((t) => h("li", {}, h("span", { class: "tag drain" }, t))))
    : h("p", { class: "muted" }, "nothing drained"));
}

function renderTimeline(s) {
  $("timeline").replaceChildren(...(s.events.length
    ? s.events.map((e) => h("li", { class: e.level, dataset: { kind: e.kind } },
        h("span", { class: "time" }, clock(e.at)), h("span", { class: "tag" }, e.kind), " ", e.text))
    : [h("li", { class: "muted" }, "nothing happened since this control plane started")]));
}

function render(s) {
  const n = s.regions.reduce((a, r) => a + r.zones.reduce((b, z) => b + z.nodes.reduce((c, n) => c + n.replicas.length, 0), 0), 0);
  $("summary").textContent = `${n} replicas · ${s.groups.length} Envoy groups · intent revision ${s.revision}` +
    `${s.synced ? "" : " · fleet and intent not read from Redis yet"}` +
    ` · Redis ${s.redis_connected ? "connected" : "UNREACHABLE"} · writes ${s.writes_enabled ? "need a token" : "disabled on this server"}` +
    ` · ${clock(s.at)}`;
  renderFleet(s);
  renderModels(s);
  renderGroups(s);
  renderDrains(s);
  renderTimeline(s);
}

// -- live feed and token --------------------------------------------------------------------

// EventSource cannot send headers: where reads need a token the feed carries it as the
// access_token query parameter (RFC 6750 2.3), which the server accepts on reads only.
let source = null;
function connect() {
  if (source) source.close();
  const t = $("token").value.trim();
  const src = new EventSource("/v1/events" + (t ? `?access_token=${encodeURIComponent(t)}` : ""));
  source = src;
  src.addEventListener("open", () => { $("conn").textContent = "live"; $("conn").className = "pill ok"; });
  src.addEventListener("error", () => { $("conn").textContent = "reconnecting…"; $("conn").className = "pill bad"; });
  src.addEventListener("snapshot", (ev) => {
    $("conn").textContent = "live";
    $("conn").className = "pill ok";
    render(JSON.parse(ev.data));
  });
}

function tokenChanged() {
  const t = $("token").value.trim();
  if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
  $("token-state").textContent = t ? "writes send this token" : "read-only";
}

$("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
$("token").addEventListener("input", tokenChanged);
$("token").addEventListener("change", connect);
$("token-form").addEventListener("submit", (e) => e.preventDefault());
tokenChanged();
connect();
