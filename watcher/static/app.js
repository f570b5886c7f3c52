// Podium training dashboard. Plain browser JavaScript, no build step, no outside assets.
// Every name that comes from MLflow (experiments, runs, features) is put on the page as text
// (text nodes / textContent), never parsed as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "podium.token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const CHART_ROWS = 25;
  const POLL_MS = 1000;

  // ---- DOM helpers ----------------------------------------------------------------------------

  /** An element; string/number children become text nodes; props: class, href, on*, data-*, others as attributes. */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    setProps(el, props);
    append(el, children);
    return el;
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    append(el, children);
    return el;
  }

  function setProps(el, props) {
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "href") el.setAttribute("href", safeHref(v));
      else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  /** Only http(s) links and the page's own #routes; anything else (javascript:, data:) becomes inert. */
  function safeHref(url) {
    const text = String(url);
    if (text.startsWith("#/")) return text;
    try {
      const parsed = new URL(text, window.location.href);
      if (parsed.protocol === "http:" || parsed.protocol === "https:") return parsed.href;
    } catch (e) { /* fall through */ }
    return "#/";
  }

  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }
  const $ = (id) => document.getElementById(id);

  function fmt(value, digits = 5) {
    if (value === null || value === undefined || Number.isNaN(value)) return "—";
    const n = Number(value);
    if (n !== 0 && Math.abs(n) < 1e-3) return n.toExponential(2);
    return n.toFixed(digits);
  }

  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
  }

  function rankBadge(rank) { return h("span", { class: `rank r${rank}` }, rank); }
  function direction(ascending) { return ascending ? "lower is better" : "higher is better"; }

  function showError(el, message) {
    el.textContent = message;
    el.hidden = !message;
  }

  // ---- HTTP -------------------------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function getJson(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" } });
    return parse(r);
  }

  async function parse(r) {
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      let detail = body && body.detail !== undefined ? body.detail : r.statusText;
      if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
      throw new HttpError(r.status, `${r.status}: ${detail}`);
    }
    return body;
  }

  /** POST with the bearer token; on 401 asks for the token (once per tab) and tries again. */
  async function post(url, body) {
    for (let attempt = 0; attempt < 3; attempt += 1) {
      const headers = { Accept: "application/json" };
      if (body !== undefined) headers["Content-Type"] = "application/json";
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (token) headers.Authorization = `Bearer ${token}`;
      const r = await fetch(url, { method: "POST", headers, body: body === undefined ? undefined : JSON.stringify(body) });
      if (r.status !== 401) return parse(r);
      sessionStorage.removeItem(TOKEN_KEY);
      const given = await askToken(token ? "That token was refused; try again." : "");
      if (!given) throw new HttpError(401, "401: this action needs the watcher's bearer token");
      sessionStorage.setItem(TOKEN_KEY, given);
    }
    throw new HttpError(401, "401: the token was refused");
  }

  function askToken(message) {
    const dialog = $("token-dialog");
    const input = $("token-input");
    input.value = "";
    showError($("token-error"), message);
    return new Promise((resolve) => {
      const done = () => {
        dialog.removeEventListener("close", done);
        resolve(dialog.returnValue === "ok" ? input.value.trim() : "");
      };
      dialog.returnValue = "";
      dialog.addEventListener("close", done);
      dialog.showModal();
      input.focus();
    });
  }

  // ---- shared data ------------------------------------------------------------------------------

  const experimentsCache = new Map();  // experiment id -> the row last seen for it

  // ---- routing ----------------------------------------------------------------------------------

  const view = () => $("view");

  function crumbs(...parts) {
    const nav = clear($("crumbs"));
    parts.forEach((part, i) => {
      if (i) nav.appendChild(h("span", { class: "sep" }, "›"));
      nav.appendChild(part.href ? h("a", { href: part.href }, part.text) : h("span", {}, part.text));
    });
  }

  // The experiment (and run) on screen: what the header's buttons pre-fill.
  let onScreen = null;

  async function route() {
    const hash = window.location.hash || "#/";
    onScreen = null;
    clear(view()).appendChild(h("div", { class: "loading" }, "Loading…"));
    refreshJobs();
    let parts;
    try {
      parts = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    } catch (e) {  // a malformed %-escape (URIError)
      showNotFound(hash);
      return;
    }
    try {
      if (parts[0] === "experiments" && parts[1]) await showExperiment(parts[1]);
      else if (parts[0] === "rules" && parts[1] && parts.length === 2) await showUniverse(parts[1]);
      else if (parts[0] === "runs" && parts[1]) await showRun(parts[1]);
      else if (!parts[0] || (parts[0] === "experiments" && parts.length <= 2)) await showExperiments();
      else showNotFound(hash);
    } catch (e) {
      if (e instanceof HttpError && e.status === 404) showNotFound(hash, e.message);
      else clear(view()).appendChild(h("div", { class: "error", "data-testid": "view-error" }, e.message));
    }
  }

  function showNotFound(hash, message) {
    crumbs({ text: "Experiments", href: "#/" }, { text: "not found" });
    const root = clear(view());
    root.appendChild(h("h1", { "data-testid": "not-found" }, "Not found"));
    root.appendChild(h("div", { class: "panel empty" },
      message || `Nothing is at ${hash}.`, " ", h("a", { href: "#/" }, "Back to the experiments")));
  }

  // ---- view: experiments (a page at a time: search, rule and state filters, sortable columns) ----

  const STATE_LABELS = [["all", "All"], ["ranked", "Ranked"], ["not_ranked", "Not ranked yet"],
    ["gated", "Gated"], ["needs_attention", "Needs attention"]];
  // The sortable columns: [sort key, heading, class]; the rest do not sort.
  const EXP_COLUMNS = [["name", "Experiment", ""], [null, "Rule", ""], [null, "Metric", ""], ["value", "Leader", ""],
    ["pbo", "PBO", "num"], ["dsr", "DSR", "num"], ["tied", "Tied", "num"], [null, "Gate", ""],
    [null, "Ranked", "num"], [null, "Unranked", "num"], ["ranked_at", "Last ranked run", ""]];
  const SEARCH_MS = 200;
  // What the experiments table shows: kept while the page is open, so coming back finds it as it was.
  const table = { q: "", rule: "", state: "all", sort: "name", order: "", page: 1, pageSize: 50 };
  let tableLoads = 0;  // bumps with each load, so a slow answer for an earlier search is dropped

  function tableUrl() {
    const params = new URLSearchParams({ page: table.page, page_size: table.pageSize, sort: table.sort, state: table.state });
    if (table.order) params.set("order", table.order);
    if (table.q) params.set("q", table.q);
    if (table.rule) params.set("rule", table.rule);
    return `/api/experiments?${params.toString()}`;
  }

  /** A page of the experiments table: the experiments are the body (a list); the paging, the
   * sort applied, the counts per state and the rules come as the answer's headers. */
  async function getTable(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" } });
    const items = await parse(r);
    const header = (name) => r.headers.get(name);
    return {
      items,
      total: Number(header("X-Total-Count")),
      page: Number(header("X-Page")),
      pages: Number(header("X-Pages")),
      sort: header("X-Podium-Sort"),
      order: header("X-Podium-Order"),
      counts: JSON.parse(header("X-Podium-Counts")),
      rules: JSON.parse(header("X-Podium-Rules")),
    };
  }

  /** Experiments seen on the page, by id, for the dialogs and the run page's breadcrumb. */
  function remember(items) {
    for (const e of items) experimentsCache.set(e.experiment_id, e);
  }

  /** The experiment of that exact name (one search), or null; fills the names list with the matches. */
  async function findExperiment(name) {
    const wanted = (name || "").trim();
    for (const e of experimentsCache.values()) if (e.experiment_name === wanted) return e;
    if (!wanted) return null;
    const items = await getJson(`/api/experiments?${new URLSearchParams({ q: wanted, page_size: 50 }).toString()}`);
    remember(items);
    fillNames(items);
    return items.find((e) => e.experiment_name === wanted) || null;
  }

  function fillNames(items) {
    const list = clear($("experiment-names"));
    for (const e of items) list.appendChild(h("option", { value: e.experiment_name }));
  }

  let nameTimer = null;
  /** As a name is typed in a dialog: the experiments whose name contains it, as suggestions. */
  function suggestNames(event) {
    clearTimeout(nameTimer);
    const typed = event.target.value.trim();
    nameTimer = setTimeout(async () => {
      try {
        const items = await getJson(`/api/experiments?${new URLSearchParams({ q: typed, page_size: 50 }).toString()}`);
        remember(items);
        fillNames(items);
      } catch (e) { /* any name can still be typed */ }
    }, SEARCH_MS);
  }

  async function showExperiments() {
    crumbs({ text: "Experiments" });
    const root = clear(view());
    root.appendChild(h("h1", {}, "Experiments"));
    root.appendChild(h("p", { class: "sub" }, "Every experiment a rule watches or the watcher ranked, with its current leader. Open one for its leaderboard and the features that matter."));
    const counts = h("div", { class: "states", "data-testid": "state-counts" });
    const search = h("input", { type: "search", placeholder: "Search experiments…", "aria-label": "Search experiments",
      value: table.q, "data-testid": "experiment-search", autocomplete: "off" });
    const ruleSelect = h("select", { "aria-label": "Rule", "data-testid": "rule-filter" });
    const universe = h("a", { class: "nowrap", "data-testid": "universe-link", hidden: true }, "Universe view ›");
    const body = h("div", { class: "panel table-wrap" });
    const pager = h("div", { class: "pager", "data-testid": "pager" });
    root.appendChild(counts);
    root.appendChild(h("div", { class: "filters" }, search, ruleSelect, universe));
    root.appendChild(body);
    root.appendChild(pager);

    let timer = null;
    search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { table.q = search.value.trim(); table.page = 1; load(); }, SEARCH_MS);
    });
    ruleSelect.addEventListener("change", () => { table.rule = ruleSelect.value; table.page = 1; load(); });

    async function load() {
      const mine = ++tableLoads;
      let data;
      try {
        data = await getTable(tableUrl());
      } catch (e) {
        if (mine !== tableLoads) return;
        if (e instanceof HttpError && e.status === 400 && table.page > 1) { table.page = 1; load(); return; }
        clear(body).appendChild(h("div", { class: "error", "data-testid": "view-error" }, e.message));
        return;
      }
      if (mine !== tableLoads) return;
      remember(data.items);
      fillNames(data.items);
      renderCounts(counts, data.counts, load);
      renderRules(ruleSelect, data.rules, universe);
      renderTable(body, data, load);
      renderPager(pager, data, load);
    }
    await load();
  }

  function renderCounts(box, counts, load) {
    clear(box);
    for (const [key, label] of STATE_LABELS) {
      const on = table.state === key;
      box.appendChild(h("button", { type: "button", class: on ? "state on" : "state", "aria-pressed": on ? "true" : "false",
        "data-testid": `state-${key}`, "data-count": counts[key],
        onclick: () => { table.state = key; table.page = 1; load(); } },
      label, " ", h("span", { class: "count" }, counts[key])));
    }
  }

  function renderRules(select, rules, universe) {
    clear(select).appendChild(h("option", { value: "" }, "All rules"));
    for (const r of rules) select.appendChild(h("option", { value: r }, `Rule ${r}`));
    select.value = rules.includes(table.rule) ? table.rule : "";
    universe.hidden = !select.value;
    if (select.value) universe.setAttribute("href", `#/rules/${encodeURIComponent(select.value)}`);
  }

  function sortHeader(key, label, cls, current, order, onSort) {
    if (!key) return h("th", { class: cls }, label);
    const arrow = current === key ? (order === "asc" ? " ▲" : " ▼") : "";
    return h("th", { class: `${cls} sortable`, "data-sort": key, "aria-sort": current === key ? (order === "asc" ? "ascending" : "descending") : "none",
      onclick: () => onSort(key) }, label, arrow);
  }

  function gateBadge(gate) {
    if (gate === "held") return h("span", { class: "badge bad", "data-testid": "gate-held", title: "The selection gate held production tags back" }, "held");
    if (gate === "passed") return h("span", { class: "badge", title: "The selection gate let the leader through" }, "passed");
    return h("span", { class: "small" }, "—");
  }

  function renderTable(box, data, load) {
    clear(box);
    if (!data.items.length) {
      box.appendChild(h("div", { class: "empty", "data-testid": "experiments-empty" }, data.counts.all
        ? "No experiment matches these filters."
        : "No watched experiment yet. Train a sweep, or rank any experiment with 🏆 Rank Top Models."));
      return;
    }
    const onSort = (key) => {
      table.order = table.sort === key ? (data.order === "asc" ? "desc" : "asc") : "";
      table.sort = key;
      table.page = 1;
      load();
    };
    const rows = data.items.map((e) => {
      const open = () => { window.location.hash = `#/experiments/${encodeURIComponent(e.experiment_id)}`; };
      return h("tr", { class: "clickable", onclick: open, "data-testid": "experiment-row", "data-experiment-id": e.experiment_id, "data-gate": e.gate },
        h("td", {}, h("a", { href: `#/experiments/${encodeURIComponent(e.experiment_id)}`, class: "runname", "data-testid": "experiment-name" }, e.experiment_name)),
        h("td", {}, e.rule || "—"),
        h("td", {}, e.metric ? h("span", {}, h("code", {}, e.metric), " ", h("span", { class: "small" }, e.ascending ? "↓ lower is better" : "↑ higher is better")) : "—"),
        h("td", { "data-testid": "experiment-leader", "data-value": e.leader ? e.leader.value : "" }, e.leader
          ? [h("span", { class: "runname" }, e.leader.run_name || e.leader.run_id), " ", h("span", { class: "small mono" }, fmt(e.leader.value))]
          : h("span", { class: "badge muted" }, "not ranked yet")),
        h("td", { class: "num mono" }, fmt(e.pbo, 2)),
        h("td", { class: "num mono" }, fmt(e.dsr, 2)),
        h("td", { class: "num" }, e.tied_with_leader === null ? "—" : e.tied_with_leader),
        h("td", {}, gateBadge(e.gate), e.attention.length ? [" ", h("span", { class: "badge bad", "data-testid": "attention", title: e.attention.join("; ") }, "⚠ ", e.attention.join("; "))] : null),
        h("td", { class: "num" }, e.ranked_runs),
        h("td", { class: "num" }, e.unranked_runs),
        h("td", { class: "small" }, when(e.ranked_at)));
    });
    box.appendChild(h("table", { "data-testid": "experiments-table" },
      h("thead", {}, h("tr", {}, EXP_COLUMNS.map(([key, label, cls]) => sortHeader(key, label, cls, data.sort, data.order, onSort)))),
      h("tbody", {}, rows)));
  }

  function renderPager(box, data, load) {
    clear(box);
    const go = (page) => { table.page = page; load(); };
    box.appendChild(h("button", { type: "button", disabled: data.page <= 1, "data-testid": "page-prev", onclick: () => go(data.page - 1) }, "‹ Previous"));
    box.appendChild(h("span", { class: "small", "data-testid": "page-info" },
      `Page ${data.page} of ${data.pages} · ${data.total} experiment${data.total === 1 ? "" : "s"}`));
    box.appendChild(h("button", { type: "button", disabled: data.page >= data.pages, "data-testid": "page-next", onclick: () => go(data.page + 1) }, "Next ›"));
  }

  // ---- view: a rule's universe (every experiment's leader in one table, CSV export) --------------

  const UNIVERSE_COLUMNS = [["experiment_name", "Experiment", "", "text"], ["leader_run_name", "Leader", "", "text"],
    ["value", "Value", "num", "value"], ["pbo", "PBO", "num", "low"], ["tied_with_leader", "Tied", "num", "low"],
    ["gate", "Gate", "", "text"], ["dsr", "DSR", "num", "high"], ["avg_test_ic", "avg_test_ic", "num", "high"],
    ["oos_sharpe", "oos_sharpe", "num", "high"]];
  // Columns shown only when some leader has them (the trading scores).
  const OPTIONAL = new Set(["dsr", "avg_test_ic", "oos_sharpe"]);

  async function showUniverse(rule) {
    const data = await getJson(`/api/rules/${encodeURIComponent(rule)}/leaders`);
    crumbs({ text: "Experiments", href: "#/" }, { text: `Rule ${rule}` });
    const root = clear(view());
    root.appendChild(h("h1", { "data-testid": "universe-title" }, `Universe of rule ${rule}`));
    root.appendChild(h("p", { class: "sub" }, "Each experiment's leader", data.metric ? [" by ", h("code", {}, data.metric), ` (${direction(data.ascending)})`] : "",
      ", how far to trust it (PBO, runs tied with it, the selection gate) and its trading scores. Sort by a column; filter by the gate."));
    const gate = h("select", { "aria-label": "Gate", "data-testid": "universe-gate" },
      h("option", { value: "" }, "Any gate verdict"), h("option", { value: "passed" }, "Gate passed"),
      h("option", { value: "held" }, "Gate held"), h("option", { value: "none" }, "No gate"));
    const exportLink = h("a", { "data-testid": "export-csv", download: "" }, "⬇ Export CSV");
    const box = h("div", { class: "panel table-wrap" });
    root.appendChild(h("div", { class: "filters" }, gate, exportLink));
    root.appendChild(box);
    const shown = UNIVERSE_COLUMNS.filter(([key]) => !OPTIONAL.has(key) || data.rows.some((r) => r[key] !== null));
    const state = { sort: "value", order: "desc" };
    const better = (row, key, kind) => {
      const v = row[key];
      if (v === null || v === undefined) return null;
      if (kind === "value") return row.ascending ? -v : v;  // the best first in each board's direction
      return v;
    };
    function render() {
      const column = UNIVERSE_COLUMNS.find(([key]) => key === state.sort);
      const kind = column ? column[3] : "text";
      const rows = data.rows.filter((r) => !gate.value || r.gate === gate.value);
      const present = rows.filter((r) => better(r, state.sort, kind) !== null);
      const missing = rows.filter((r) => better(r, state.sort, kind) === null);
      present.sort((a, b) => {
        const x = better(a, state.sort, kind);
        const y = better(b, state.sort, kind);
        const c = typeof x === "string" ? x.localeCompare(y) : x - y;
        return state.order === "asc" ? c : -c;
      });
      const params = new URLSearchParams({ format: "csv" });
      if (["value", "pbo", "dsr", "avg_test_ic", "oos_sharpe"].includes(state.sort)) { params.set("sort", state.sort); params.set("order", state.order); }
      exportLink.setAttribute("href", `/api/rules/${encodeURIComponent(rule)}/leaders?${params.toString()}`);
      const onSort = (key) => {
        const col = UNIVERSE_COLUMNS.find(([k]) => k === key);
        state.order = state.sort === key ? (state.order === "asc" ? "desc" : "asc") : (col[3] === "low" || col[3] === "text" ? "asc" : "desc");
        state.sort = key;
        render();
      };
      clear(box).appendChild(h("table", { "data-testid": "universe-table" },
        h("thead", {}, h("tr", {}, shown.map(([key, label, cls]) => sortHeader(key, label, cls, state.sort, state.order, onSort)))),
        h("tbody", {}, [...present, ...missing].map((r) => h("tr", { "data-testid": "universe-row", "data-experiment-id": r.experiment_id, "data-gate": r.gate },
          shown.map(([key, , cls]) => {
            if (key === "experiment_name") return h("td", {}, h("a", { href: `#/experiments/${encodeURIComponent(r.experiment_id)}`, class: "runname" }, r.experiment_name));
            if (key === "leader_run_name") return h("td", {}, r.leader_run_id ? (r.leader_run_name || r.leader_run_id) : h("span", { class: "badge muted" }, "not ranked yet"));
            if (key === "gate") return h("td", {}, gateBadge(r.gate));
            if (key === "tied_with_leader") return h("td", { class: cls }, r[key] === null ? "—" : r[key]);
            const other = key === "value" && r.metric && r.metric !== data.metric;  // ranked on demand by another metric
            return h("td", { class: `${cls} mono`, "data-testid": `cell-${key}` }, fmt(r[key], key === "value" ? 5 : 3),
              other ? [" ", h("span", { class: "small", title: "ranked on demand by another metric" }, `(${r.metric}${r.ascending ? " ↓" : ""})`)] : null);
          }))))));
    }
    gate.addEventListener("change", render);
    render();
  }

  // ---- view: one experiment -----------------------------------------------------------------------

  async function showExperiment(experimentId) {
    const board = await getJson(`/api/experiments/${encodeURIComponent(experimentId)}/leaderboard`);
    crumbs({ text: "Experiments", href: "#/" }, { text: board.experiment_name });
    onScreen = { experiment_id: board.experiment_id, experiment_name: board.experiment_name, metric: board.metric,
      ascending: board.ascending, top_n: board.top_n, run_id: board.models[0] ? board.models[0].run_id : "" };
    const root = clear(view());
    root.appendChild(h("h1", { "data-testid": "experiment-title" }, board.experiment_name));
    root.appendChild(h("p", { class: "sub" },
      `Ranked by `, h("code", {}, board.metric || "?"), ` (${direction(board.ascending)}), rule ${board.rule}.`));
    const leader = board.models[0];
    root.appendChild(h("div", { class: "cards" },
      card("Leader", leader ? leader.run_name : "—"),
      card(`Best ${board.metric || "value"}`, leader ? fmt(leader.value) : "—"),
      card("Ranked runs", board.ranked_runs),
      card("Unranked runs", board.unranked_runs),
      card("Last ranked run", when(board.ranked_at))));
    root.appendChild(h("div", { class: "buttons left" },
      h("button", { type: "button", onclick: () => openRank(board.experiment_name, board.metric, board.ascending, board.top_n) }, "🏆 Rank again…"),
      h("button", { type: "button", onclick: () => openRetrain(board.experiment_name, leader ? leader.run_id : "") }, "🔄 Retrain the leader…")));

    const paramKeys = [];
    for (const m of board.models) for (const k of Object.keys(m.params || {})) if (!paramKeys.includes(k)) paramKeys.push(k);
    const rows = board.models.map((m) => h("tr", { "data-testid": "board-row", "data-run-id": m.run_id },
      h("td", {}, rankBadge(m.rank)),
      h("td", {},
        h("a", { href: `#/runs/${encodeURIComponent(m.run_id)}`, class: "runname", "data-testid": "board-run" }, m.run_name || m.run_id),
        m.retrained_from ? [" ", h("span", { class: "badge run" }, "retrained")] : null,
        h("div", { class: "small mono" }, m.run_id)),
      h("td", { class: "num mono" }, fmt(m.value)),
      h("td", {}, m.production_candidate ? h("span", { class: "badge", "data-testid": "candidate" }, "★ production candidate") : "",
        m.tied_with_leader ? [" ", h("span", { class: "badge tied", "data-testid": "tied", title: "The data cannot tell this run apart from the best (model confidence set)" }, "≈ tied with the leader")] : null),
      h("td", { class: "num" }, m.total_features === null || m.total_features === undefined ? "—" : m.total_features),
      h("td", { class: "params" }, paramKeys.filter((k) => k in m.params).map((k) => h("span", {}, `${k}=${m.params[k]}`))),
      h("td", { class: "nowrap" }, m.url ? h("a", { href: m.url, target: "_blank", rel: "noopener noreferrer", "data-testid": "mlflow-link" }, "MLflow ↗") : "")));
    root.appendChild(h("div", { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", {}, `Leaderboard · top ${board.top_n}`),
        h("span", { class: "small" }, "Click a run for its feature importance.")),
      h("div", { class: "table-wrap" }, h("table", { "data-testid": "board-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Rank"), h("th", {}, "Run"), h("th", { class: "num" }, board.metric || "value"),
          h("th", {}, ""), h("th", { class: "num" }, "Features"), h("th", {}, "Hyperparameters"), h("th", {}, ""))),
        h("tbody", {}, rows)))));

    const selection = await getSelection(experimentId);
    if (selection) root.appendChild(selectionPanel(selection));

    const across = h("div", { class: "panel", "data-testid": "across-panel" });
    root.appendChild(across);
    await showAcross(across, experimentId, Math.min(10, board.models.length || 10));

    const hyper = h("div", { class: "panel", "data-testid": "hyperparameters-panel" });
    root.appendChild(hyper);
    await showHyperparameters(hyper, experimentId);
  }

  // ---- which hyperparameters mattered (tag podium.hyperparameters, written by the trainer) --------

  async function showHyperparameters(panel, experimentId) {
    const data = await getJson(`/api/experiments/${encodeURIComponent(experimentId)}/hyperparameters`);
    panel.appendChild(h("div", { class: "panel-head" }, h("h2", {}, "Which hyperparameters mattered"),
      data.importance ? h("span", { class: "small" }, `fANOVA over ${data.runs} runs, ${data.metric}`) : null));
    if (!data.importance) {
      panel.appendChild(h("p", { class: "empty", "data-testid": "hyperparameters-reason" }, data.reason));
      return;
    }
    panel.appendChild(h("div", { class: "chart", "data-testid": "hyperparameters-chart" }, hyperparameterChart(data)));
    panel.appendChild(h("p", { class: "hint" },
      "Each varied hyperparameter's share of the ranking metric's variance (fANOVA, summing to 1), and its range among the best 10% of the runs the search space covers."));
  }

  function rangeText(range) {
    if (!Array.isArray(range)) return "";
    const numbers = range.length === 2 && range.every((v) => typeof v === "number");
    const num = (v) => (Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4))));
    return numbers ? `${num(range[0])} – ${num(range[1])}` : range.join(", ");
  }

  // Bars of the shares, each hyperparameter's best range written after its bar.
  function hyperparameterChart(data) {
    const items = Object.entries(data.importance).map(([name, share]) => ({ name, share, range: rangeText((data.best_ranges || {})[name]) }));
    const rowH = 24, top = 24, panelW = 300;
    const labelW = labelWidth(items.map((i) => i.name));
    const rangeW = Math.max(90, ...items.map((i) => 7 * i.range.length));
    const width = labelW + panelW + rangeW + 30;
    const height = top + items.length * rowH + 26;
    const x = scale(0, 1, panelW);
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "Hyperparameter importance" });
    svg.appendChild(s("text", { x: labelW, y: 14, class: "head" }, "Share of the metric's variance"));
    svg.appendChild(s("text", { x: labelW + panelW + 16, y: 14, class: "head" }, "Range among the best"));
    items.forEach((item, i) => {
      const y = top + i * rowH;
      svg.appendChild(s("text", { x: labelW - 8, y: y + 16, "text-anchor": "end" }, clip(item.name, labelW - 10), s("title", {}, item.name)));
      svg.appendChild(s("rect", { x: labelW, y: y + 5, width: Math.max(1, x(item.share)), height: rowH - 10, rx: 3, class: "bar-perm", "data-testid": "hyperparameter-bar" },
        s("title", {}, `${item.name}: ${fmt(item.share, 3)} of the variance; best ${item.range}`)));
      svg.appendChild(s("text", { x: labelW + x(item.share) + 6, y: y + 16, class: "axis" }, fmt(item.share, 2)));
      svg.appendChild(s("text", { x: labelW + panelW + 16, y: y + 16, class: "mono", "data-testid": "hyperparameter-range" }, item.range));
    });
    axis(svg, x, labelW, top + items.length * rowH, 0, 1);
    return svg;
  }

  async function getSelection(experimentId) {
    const r = await fetch(`/api/experiments/${encodeURIComponent(experimentId)}/selection`);
    return r.status === 404 ? null : parse(r);
  }

  // One sentence a team lead reads: is the leader real, and how many runs are as good?
  function selectionSentence(sel) {
    let first;
    if (sel.pbo === null || sel.pbo === undefined) first = `There is no PBO for this board: ${sel.reason}.`;
    else if (sel.pbo > 0.5) first = `Picking the best run on part of the history and checking it on the rest, the pick landed below the median run ${Math.round(sel.pbo * 100)}% of the time: the leader's lead is probably luck.`;
    else if (sel.pbo === 0) first = "Picking the best run on part of the history and checking it on the rest, the pick never landed below the median run: the lead holds up out of sample.";
    else first = `Picking the best run on part of the history and checking it on the rest, the pick landed below the median run ${Math.round(sel.pbo * 100)}% of the time.`;
    const n = sel.tied_with_leader;
    const others = n ? n - 1 : 0;
    const more = sel.tied_at_least ? "at least " : "";
    const second = !n ? "" : others === 0 ? " No other run is statistically tied with it."
      : ` ${more}${others} other run${others === 1 ? " is" : "s are"} statistically tied with it (marked ≈ on the leaderboard).`;
    return first + second + dsrSentence(sel);
  }

  // The Deflated Sharpe Ratio beside PBO, for rules with selection.sharpe_metric.
  function dsrSentence(sel) {
    if (!sel.sharpe_metric) return "";
    if (sel.dsr === null || sel.dsr === undefined) return ` There is no DSR: ${sel.dsr_reason}.`;
    return ` Deflated for the ${sel.trials} trials, the leader's ${sel.sharpe_metric} of ${fmt(sel.leader_sharpe, 2)} against ${fmt(sel.sr0_annualised, 2)} expected of the best trial without skill gives a DSR of ${fmt(sel.dsr, 2)} (PSR ${fmt(sel.psr, 2)}).`;
  }

  function selectionPanel(sel) {
    const panel = h("div", { class: "panel", "data-testid": "selection-panel" },
      h("div", { class: "panel-head" }, h("h2", {}, "Is the leader real?"),
        h("span", { class: "small" }, `${sel.runs} runs × ${sel.folds} folds, ${sel.blocks} blocks`)),
      h("p", { "data-testid": "selection-sentence" }, selectionSentence(sel)),
      h("div", { class: "cards" },
        card("PBO", h("span", { "data-testid": "selection-pbo" }, sel.pbo === null ? "—" : fmt(sel.pbo, 2))),
        card("DSR", h("span", { "data-testid": "selection-dsr" }, sel.dsr === null || sel.dsr === undefined ? "—" : fmt(sel.dsr, 2))),
        card("Tied with the leader", sel.tied_with_leader === null ? "—" : `${sel.tied_at_least ? "≥ " : ""}${sel.tied_with_leader}`),
        card("Splits", sel.splits),
        card("Runs left out", sel.runs_left_out)));
    if (sel.lambdas && sel.lambdas.length) panel.appendChild(h("div", { class: "chart" }, lambdaChart(sel.lambdas)));
    panel.appendChild(h("p", { class: "hint" },
      "PBO: the probability of backtest overfitting (Bailey, Borwein, López de Prado & Zhu, 2017). λ is the logit of the pick's out-of-sample rank; λ ≤ 0 means below the median. Tied: the model confidence set (Hansen, Lunde & Nason, 2011)."));
    return panel;
  }

  // A histogram of λ over the splits, the zero line marking the median.
  function lambdaChart(lambdas) {
    const bins = 20;
    const lo = Math.min(...lambdas, -0.5), hi = Math.max(...lambdas, 0.5);
    const width = 520, height = 170, top = 22, bottom = 26, left = 8;
    const counts = new Array(bins).fill(0);
    for (const l of lambdas) counts[Math.min(bins - 1, Math.floor(((l - lo) / (hi - lo)) * bins))] += 1;
    const most = Math.max(...counts, 1);
    const x = scale(lo, hi, width - 2 * left);
    const barW = (width - 2 * left) / bins;
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "λ over the splits", "data-testid": "lambda-chart" });
    svg.appendChild(s("text", { x: left, y: 14, class: "head" }, `λ over ${lambdas.length} splits`));
    counts.forEach((c, i) => {
      const h_ = ((height - top - bottom) * c) / most;
      const mid = lo + ((i + 0.5) * (hi - lo)) / bins;
      svg.appendChild(s("rect", { x: left + i * barW + 1, y: height - bottom - h_, width: Math.max(1, barW - 2), height: h_, rx: 2,
        class: mid <= 0 ? "bar-below" : "bar-perm" }, s("title", {}, `${c} split(s)`)));
    });
    svg.appendChild(s("line", { x1: left + x(0), x2: left + x(0), y1: top - 2, y2: height - bottom, class: "zero" }));
    axis(svg, x, left, height - bottom, lo, hi);
    return svg;
  }

  function card(key, value) {
    return h("div", { class: "card" }, h("div", { class: "k" }, key), h("div", { class: "v" }, value));
  }

  async function showAcross(panel, experimentId, topN) {
    const input = h("input", { type: "number", min: 1, max: 200, value: topN, "data-testid": "across-top-n" });
    const body = h("div", {}, h("div", { class: "loading" }, "Reading the leaders' importance…"));
    const problem = h("p", { class: "error", hidden: true, role: "alert", "data-testid": "across-error" });
    input.addEventListener("change", () => {
      const n = Number(input.value);
      const ok = Number.isInteger(n) && n >= 1 && n <= 200 && input.value.trim() !== "";
      showError(problem, ok ? "" : "Top N runs must be a whole number from 1 to 200.");
      if (ok) loadAcross(body, experimentId, n);
    });
    clear(panel).appendChild(h("div", { class: "panel-head" },
      h("h2", {}, "Features that matter across the leaders"),
      h("label", { class: "inline" }, "Top N runs", input)));
    panel.appendChild(problem);
    panel.appendChild(h("p", { class: "hint" }, "Mean permutation importance over the top N runs of the leaderboard (runs without the feature are left out), and the feature's mean rank in them."));
    panel.appendChild(body);
    await loadAcross(body, experimentId, topN);
  }

  async function loadAcross(body, experimentId, topN) {
    try {
      const data = await getJson(`/api/experiments/${encodeURIComponent(experimentId)}/importance?top_n=${topN}`);
      clear(body);
      if (!data.features.length) {
        body.appendChild(h("div", { class: "empty" }, "None of these runs has a feature_importance.csv."));
        return;
      }
      const shown = data.features.slice(0, CHART_ROWS);
      body.appendChild(h("div", { class: "two" },
        h("div", { class: "chart", "data-testid": "across-chart" }, barChart(shown.map((f) => ({ label: f.feature, value: f.mean_importance })), "Mean importance")),
        h("div", { class: "table-scroll" }, h("table", { "data-testid": "across-table" },
          h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "Feature"), h("th", { class: "num" }, "Mean imp."), h("th", { class: "num" }, "Mean rank"), h("th", { class: "num" }, "Runs"))),
          h("tbody", {}, data.features.map((f, i) => h("tr", { "data-testid": "across-row" },
            h("td", {}, i + 1), h("td", { class: "mono" }, f.feature), h("td", { class: "num mono" }, fmt(f.mean_importance)),
            h("td", { class: "num" }, f.mean_rank.toFixed(1)), h("td", { class: "num" }, `${f.runs}/${data.runs.length}`))))))));
    } catch (e) {
      clear(body).appendChild(h("div", { class: "error" }, e.message));
    }
  }

  // ---- view: one run's importance ----------------------------------------------------------------

  // A run's headline metrics: a regressor's, or a classifier's (--task direction, classification).
  const RUN_CARDS = ["avg_test_r2", "avg_test_rmse", "avg_test_mae", "avg_train_r2",
    "avg_test_auc", "avg_test_logloss", "avg_test_accuracy", "avg_test_brier", "avg_train_auc"];

  /** What the header's buttons need of an experiment not seen in the table: its kept board's head. */
  async function boardOf(experimentId) {
    try {
      const board = await getJson(`/api/experiments/${encodeURIComponent(experimentId)}/leaderboard`);
      return { experiment_id: board.experiment_id, experiment_name: board.experiment_name, metric: board.metric,
        ascending: board.ascending, top_n: board.top_n };
    } catch (e) {
      return null;  // not ranked (or gone): the breadcrumb names the id
    }
  }

  async function showRun(runId) {
    const data = await getJson(`/api/runs/${encodeURIComponent(runId)}/importance`);
    const exp = experimentsCache.get(data.experiment_id) || (await boardOf(data.experiment_id));
    crumbs({ text: "Experiments", href: "#/" },
      exp ? { text: exp.experiment_name, href: `#/experiments/${encodeURIComponent(exp.experiment_id)}` } : { text: `experiment ${data.experiment_id}` },
      { text: data.run_name || runId });
    onScreen = exp ? { experiment_id: exp.experiment_id, experiment_name: exp.experiment_name, metric: exp.metric,
      ascending: exp.ascending, top_n: exp.top_n, run_id: runId } : { experiment_name: "", run_id: runId };
    const root = clear(view());
    root.appendChild(h("h1", { "data-testid": "run-title" }, data.run_name || runId));
    root.appendChild(h("p", { class: "sub" }, h("span", { class: "mono" }, runId), " · ", data.status,
      data.retrained_from ? [" · retrained from ", h("a", { href: `#/runs/${encodeURIComponent(data.retrained_from)}`, class: "mono" }, data.retrained_from)] : null,
      data.url ? [" · ", h("a", { href: data.url, target: "_blank", rel: "noopener noreferrer" }, "open in MLflow ↗")] : null));
    const metrics = data.metrics || {};
    root.appendChild(h("div", { class: "cards" },
      card("Features", data.total_features),
      ...RUN_CARDS.filter((k) => k in metrics).map((k) => card(k, fmt(metrics[k])))));
    root.appendChild(h("div", { class: "buttons left" },
      h("button", { type: "button", onclick: () => openRetrain(exp ? exp.experiment_name : "", runId) }, "🔄 Retrain without weak features…")));

    const shown = data.features.slice(0, CHART_ROWS);
    root.appendChild(h("div", { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", {}, "Feature importance"),
        h("span", { class: "small" }, data.features.length > CHART_ROWS ? `top ${CHART_ROWS} of ${data.features.length} features` : `${data.features.length} features`)),
      h("div", { class: "legend" },
        h("span", {}, h("span", { class: "swatch perm" }), `Permutation importance (mean ± std, drop in ${"avg_test_auc" in metrics ? "ROC AUC" : "R²"} on held-out rows)`),
        h("span", {}, h("span", { class: "swatch shap" }), "SHAP (mean |SHAP value|)")),
      h("div", { class: "chart", "data-testid": "importance-chart" }, importanceChart(shown))));
    root.appendChild(h("div", { class: "panel" }, h("h2", {}, "All features"),
      h("div", { class: "table-scroll" }, h("table", { "data-testid": "importance-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "Feature"), h("th", { class: "num" }, "Importance"), h("th", { class: "num" }, "± std"), h("th", { class: "num" }, "SHAP"))),
        h("tbody", {}, data.features.map((f) => h("tr", { "data-testid": "importance-row" },
          h("td", {}, f.rank), h("td", { class: "mono", "data-testid": "feature-name" }, f.feature),
          h("td", { class: "num mono" }, fmt(f.importance_mean)), h("td", { class: "num mono" }, fmt(f.importance_std)),
          h("td", { class: "num mono" }, fmt(f.shap_importance)))))))));
  }

  // ---- charts (SVG) ----------------------------------------------------------------------------

  function labelWidth(labels) {
    const longest = labels.reduce((m, l) => Math.max(m, String(l).length), 0);
    return Math.min(260, Math.max(90, longest * 7 + 12));
  }

  function clip(text, width) {
    const max = Math.floor(width / 7);
    const t = String(text);
    return t.length > max ? `${t.slice(0, max - 1)}…` : t;
  }

  function scale(min, max, width) {
    const lo = Math.min(0, min);
    const hi = Math.max(0, max) || 1;
    return (v) => ((v - lo) / (hi - lo)) * width;
  }

  /** Permutation mean with a ±std whisker on the left, SHAP on the right; one row per feature. */
  function importanceChart(features) {
    const rowH = 22;
    const labelW = labelWidth(features.map((f) => f.feature));
    const panelW = 330;
    const gap = 48;
    const top = 28;
    const width = labelW + panelW * 2 + gap + 20;
    const height = top + features.length * rowH + 26;
    const perm = features.map((f) => f.importance_mean || 0);
    const lows = features.map((f) => (f.importance_mean || 0) - (f.importance_std || 0));
    const highs = features.map((f) => (f.importance_mean || 0) + (f.importance_std || 0));
    const xp = scale(Math.min(...lows, 0), Math.max(...highs, 0), panelW);
    const shapMax = Math.max(...features.map((f) => f.shap_importance || 0), 0);
    const xs = scale(0, shapMax, panelW);
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "Feature importance chart" });
    const x0 = labelW;
    const x1 = labelW + panelW + gap;
    svg.appendChild(s("text", { x: x0, y: 14, class: "head" }, "Permutation importance"));
    svg.appendChild(s("text", { x: x1, y: 14, class: "head" }, "SHAP"));
    features.forEach((f, i) => {
      const y = top + i * rowH;
      const mean = perm[i];
      const title = s("title", {}, `${f.feature}: importance ${fmt(f.importance_mean)} ± ${fmt(f.importance_std)}, SHAP ${fmt(f.shap_importance)}`);
      svg.appendChild(s("text", { x: labelW - 8, y: y + 15, "text-anchor": "end" }, clip(f.feature, labelW - 10), title));
      const zp = xp(0);
      const xm = xp(mean);
      svg.appendChild(s("rect", { x: x0 + Math.min(zp, xm), y: y + 4, width: Math.max(1, Math.abs(xm - zp)), height: rowH - 8, rx: 3, class: "bar-perm" }, s("title", {}, `${f.feature}: ${fmt(mean)}`)));
      if (f.importance_std) {
        const a = x0 + xp(lows[i]);
        const b = x0 + xp(highs[i]);
        const cy = y + rowH / 2;
        svg.appendChild(s("line", { x1: a, x2: b, y1: cy, y2: cy, class: "whisker" }));
        svg.appendChild(s("line", { x1: a, x2: a, y1: cy - 4, y2: cy + 4, class: "whisker" }));
        svg.appendChild(s("line", { x1: b, x2: b, y1: cy - 4, y2: cy + 4, class: "whisker" }));
      }
      const sv = f.shap_importance || 0;
      svg.appendChild(s("rect", { x: x1, y: y + 4, width: Math.max(1, xs(sv) - xs(0)), height: rowH - 8, rx: 3, class: "bar-shap" }, s("title", {}, `${f.feature}: SHAP ${fmt(sv)}`)));
    });
    const bottom = top + features.length * rowH;
    svg.appendChild(s("line", { x1: x0 + xp(0), x2: x0 + xp(0), y1: top - 2, y2: bottom, class: "zero" }));
    svg.appendChild(s("line", { x1: x1, x2: x1, y1: top - 2, y2: bottom, class: "zero" }));
    axis(svg, xp, x0, bottom, Math.min(...lows, 0), Math.max(...highs, 0));
    axis(svg, xs, x1, bottom, 0, shapMax);
    return svg;
  }

  function axis(svg, x, offset, y, lo, hi) {
    const ticks = [[lo, "start"], [(lo + hi) / 2, "middle"], [hi, "end"]];
    for (const [v, anchor] of ticks) {
      svg.appendChild(s("text", { x: offset + x(v), y: y + 16, "text-anchor": anchor, class: "axis" }, fmt(v, 4)));
    }
  }

  function barChart(items, heading) {
    const rowH = 22;
    const labelW = labelWidth(items.map((i) => i.label));
    const panelW = 360;
    const top = 24;
    const width = labelW + panelW + 20;
    const height = top + items.length * rowH + 26;
    const values = items.map((i) => i.value || 0);
    const x = scale(Math.min(...values, 0), Math.max(...values, 0), panelW);
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": heading });
    svg.appendChild(s("text", { x: labelW, y: 14, class: "head" }, heading));
    items.forEach((item, i) => {
      const y = top + i * rowH;
      svg.appendChild(s("text", { x: labelW - 8, y: y + 15, "text-anchor": "end" }, clip(item.label, labelW - 10), s("title", {}, item.label)));
      const z = x(0);
      const xv = x(values[i]);
      svg.appendChild(s("rect", { x: labelW + Math.min(z, xv), y: y + 4, width: Math.max(1, Math.abs(xv - z)), height: rowH - 8, rx: 3, class: "bar-perm" }, s("title", {}, `${item.label}: ${fmt(values[i])}`)));
    });
    const bottom = top + items.length * rowH;
    svg.appendChild(s("line", { x1: labelW + x(0), x2: labelW + x(0), y1: top - 2, y2: bottom, class: "zero" }));
    axis(svg, x, labelW, bottom, Math.min(...values, 0), Math.max(...values, 0));
    return svg;
  }

  // ---- 🏆 Rank Top Models -----------------------------------------------------------------------

  let ranked = false;  // re-render the view behind the dialog once it closes

  function guessAscending(metric) { return /(rmse|mae|mse|loss|error|brier)/i.test(metric); }

  const FALLBACK_METRICS = ["avg_test_r2", "avg_test_rmse", "avg_test_mae", "avg_train_rmse", "num_folds"];
  let metricsFor = null;  // the experiment whose metric keys the list shows (or is loading)

  /** The metric list: the keys of the experiment's board runs and newest finished runs. */
  async function fillMetrics(experimentName) {
    const list = $("rank-metrics");
    metricsFor = experimentName;
    let keys = FALLBACK_METRICS;
    const exp = await findExperiment(experimentName).catch(() => null);
    if (exp) {
      try {
        const data = await getJson(`/api/experiments/${encodeURIComponent(exp.experiment_id)}/metric-keys`);
        if (data.metric_keys.length) keys = data.metric_keys;
      } catch (e) { /* any name can still be typed */ }
    }
    if (metricsFor !== experimentName) return;  // another experiment was picked meanwhile
    clear(list);
    for (const k of keys) list.appendChild(h("option", { value: k }));
    list.dataset.experiment = experimentName;
  }

  async function openRank(experimentName, metric, ascending, topN) {
    const first = experimentsCache.values().next();
    $("rank-experiment").value = experimentName || (first.done ? "" : first.value.experiment_name);
    fillMetrics($("rank-experiment").value);  // not awaited: the dialog opens at once
    $("rank-metric").value = metric || "avg_test_r2";
    $("rank-direction").value = String(ascending === undefined || ascending === null ? guessAscending($("rank-metric").value) : ascending);
    if (topN) $("rank-top-n").value = topN;
    showError($("rank-error"), "");
    clear($("rank-result"));
    $("rank-dialog").showModal();
  }

  async function submitRank(event) {
    event.preventDefault();
    const params = new URLSearchParams({
      experiment_name: $("rank-experiment").value.trim(),
      metric: $("rank-metric").value.trim(),
      top_n: $("rank-top-n").value,
      ascending: $("rank-direction").value,
    });
    showError($("rank-error"), "");
    const result = clear($("rank-result"));
    result.appendChild(h("div", { class: "loading" }, "Ranking…"));
    $("rank-submit").disabled = true;
    try {
      const body = await post(`/models/rank?${params.toString()}`);
      clear(result);
      result.appendChild(h("p", { class: "small", "data-testid": "rank-summary" },
        `Ranked by ${body.metric}: ${body.total_ranked} runs tagged top_${body.top_n}; best ${fmt(body.summary.best_value)}, worst ${fmt(body.summary.worst_value)}.`));
      result.appendChild(h("div", { class: "table-scroll" }, h("table", { "data-testid": "rank-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Rank"), h("th", {}, "Run"), h("th", {}, "Run ID"), h("th", { class: "num" }, body.metric))),
        h("tbody", {}, body.models.map((m) => h("tr", { "data-testid": "rank-row", "data-run-id": m.run_id },
          h("td", {}, rankBadge(m.rank), m.rank <= 3 ? [" ", h("span", { class: "badge" }, "★")] : null),
          h("td", { class: "runname" }, m.run_name || ""),
          h("td", { class: "mono small" }, m.run_id),
          h("td", { class: "num mono" }, fmt(m.value))))))));
      ranked = true;
    } catch (e) {
      clear(result);
      showError($("rank-error"), e.message);
    } finally {
      $("rank-submit").disabled = false;
    }
  }

  // ---- 🔄 Retrain Existing Model ----------------------------------------------------------------

  let retrainFeatures = [];
  let loadedRun = null;  // the run whose features the table shows: the one a submit retrains
  let featureLoads = 0;  // bumps with each load, so a slow answer for an earlier run is dropped
  let pollTimer = null;
  let shownJob = null;

  async function openRetrain(experimentName, runId) {
    $("retrain-experiment").value = experimentName || "";
    $("retrain-run-id").value = runId || "";
    showError($("retrain-error"), "");
    clear($("retrain-features"));
    clear($("retrain-job"));
    retrainFeatures = [];
    loadedRun = null;
    updateCount();
    $("retrain-dialog").showModal();
    await fillRuns();
    if (runId) await loadFeatures();
  }

  async function fillRuns() {
    const pick = clear($("retrain-run-pick"));
    pick.appendChild(h("option", { value: "" }, "— pick a ranked run —"));
    const exp = await findExperiment($("retrain-experiment").value).catch(() => null);
    if (!exp || !exp.leader) return;
    try {
      const board = await getJson(`/api/experiments/${encodeURIComponent(exp.experiment_id)}/leaderboard`);
      for (const m of board.models) {
        pick.appendChild(h("option", { value: m.run_id }, `#${m.rank} ${m.run_name || m.run_id} (${fmt(m.value)})`));
      }
      pick.value = board.models.some((m) => m.run_id === $("retrain-run-id").value) ? $("retrain-run-id").value : "";
    } catch (e) { /* the run id field still works */ }
  }

  async function loadFeatures() {
    const runId = $("retrain-run-id").value.trim();
    showError($("retrain-error"), "");
    clear($("retrain-job"));
    const box = clear($("retrain-features"));
    retrainFeatures = [];
    loadedRun = null;
    const load = ++featureLoads;
    updateCount();
    if (!runId) { showError($("retrain-error"), "Pick a run or enter a run ID."); return; }
    box.appendChild(h("div", { class: "loading" }, "Reading the run's feature_importance.csv…"));
    try {
      const data = await getJson(`/api/runs/${encodeURIComponent(runId)}/importance`);
      if (load !== featureLoads) return;
      retrainFeatures = data.features.map((f) => ({ ...f, checkbox: null }));
      loadedRun = data.run_id;
      renderFeatureTable(data);
      applyThreshold();
    } catch (e) {
      if (load !== featureLoads) return;
      clear(box);
      showError($("retrain-error"), e.message);
    }
  }

  /** The Run ID field no longer names the run shown: drop its features until they are loaded. */
  function runIdEdited() {
    if (loadedRun === null || $("retrain-run-id").value.trim() === loadedRun) return;
    featureLoads += 1;
    retrainFeatures = [];
    loadedRun = null;
    clear($("retrain-features")).appendChild(h("p", { class: "small", "data-testid": "retrain-stale" },
      "The run ID changed: press Show features (or Enter) to load that run's features."));
    updateCount();
  }

  function renderFeatureTable(data) {
    const box = clear($("retrain-features"));
    const rows = retrainFeatures.map((f) => {
      const checkbox = h("input", { type: "checkbox", "data-feature-index": retrainFeatures.indexOf(f), "aria-label": `drop ${f.feature}` });
      checkbox.addEventListener("change", updateCount);
      f.checkbox = checkbox;
      return h("tr", { "data-testid": "feature-row" },
        h("td", {}, checkbox),
        h("td", {}, f.rank),
        h("td", { class: "mono", "data-testid": "feature-name" }, f.feature),
        h("td", { class: "num mono" }, fmt(f.importance_mean)),
        h("td", { class: "num mono" }, fmt(f.importance_std)),
        h("td", { class: "num mono" }, fmt(f.shap_importance)));
    });
    box.appendChild(h("p", { class: "small", "data-testid": "retrain-shown-run", "data-run-id": data.run_id },
      `${data.run_name || data.run_id} (${data.run_id}): ${data.features.length} features. Tick the ones to drop.`));
    box.appendChild(h("div", { class: "table-scroll" }, h("table", { "data-testid": "feature-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Drop"), h("th", {}, "#"), h("th", {}, "Feature"), h("th", { class: "num" }, "Importance"), h("th", { class: "num" }, "± std"), h("th", { class: "num" }, "SHAP"))),
      h("tbody", {}, rows))));
  }

  function applyThreshold() {
    const threshold = Number($("retrain-threshold").value);
    for (const f of retrainFeatures) {
      if (f.checkbox) f.checkbox.checked = Number.isFinite(threshold) && f.importance_mean !== null && f.importance_mean < threshold;
    }
    updateCount();
  }

  function ticked() { return retrainFeatures.filter((f) => f.checkbox && f.checkbox.checked).map((f) => f.feature); }

  function updateCount() {
    const count = $("retrain-count");
    const submit = $("retrain-submit");
    const total = retrainFeatures.length;
    const dropping = ticked().length;
    count.classList.remove("warn");
    if (!total) { count.textContent = ""; submit.disabled = true; return; }
    if (dropping === 0) {
      count.textContent = `Tick at least one feature to drop (all ${total} remain).`;
      count.classList.add("warn");
      submit.disabled = true;
    } else if (dropping === total) {
      count.textContent = `Dropping all ${total} features leaves nothing to train on.`;
      count.classList.add("warn");
      submit.disabled = true;
    } else {
      count.textContent = `Dropping ${dropping} of ${total} features: ${total - dropping} remain.`;
      submit.disabled = pollTimer !== null;
    }
  }

  async function submitRetrain(event) {
    event.preventDefault();
    const exclude = ticked();
    const runId = loadedRun;
    if (!runId || !exclude.length || exclude.length === retrainFeatures.length) { updateCount(); return; }
    showError($("retrain-error"), "");
    $("retrain-submit").disabled = true;
    try {
      const job = await post("/api/retrain", { run_id: runId, exclude });
      renderJob(job);
      refreshJobs();
      watchJob(job.job_id);
    } catch (e) {
      showError($("retrain-error"), e.message);
      updateCount();
    }
  }

  function watchJob(jobId) {
    stopPolling();
    pollTimer = setInterval(async () => {
      try {
        const job = await getJson(`/api/jobs/${encodeURIComponent(jobId)}`);
        renderJob(job);
        if (job.status === "finished" || job.status === "failed") { stopPolling(); updateCount(); refreshJobs(); }
      } catch (e) {
        stopPolling();
        showError($("retrain-error"), e.message);
      }
    }, POLL_MS);
  }

  function stopPolling() {
    if (pollTimer !== null) clearInterval(pollTimer);
    pollTimer = null;
  }

  function renderJob(job) {
    const box = clear($("retrain-job"));
    const links = [];
    if (job.new_run_id) {
      links.push(h("a", { href: `#/runs/${encodeURIComponent(job.new_run_id)}`, "data-testid": "new-run-link", "data-run-id": job.new_run_id, onclick: () => $("retrain-dialog").close() }, `new run ${job.new_run_id}`));
      if (job.new_run_url) links.push(" · ", h("a", { href: job.new_run_url, target: "_blank", rel: "noopener noreferrer" }, "open in MLflow ↗"));
    }
    const label = { queued: "queued", running: "running…", finished: "finished", failed: "failed" }[job.status] || job.status;
    box.appendChild(h("div", { class: "job", "data-testid": "job", "data-status": job.status, "data-job-id": job.job_id },
      h("div", { class: "job-head" },
        h("strong", {}, "Retrain job "), h("span", { class: "mono small" }, job.job_id),
        h("span", { class: `badge status-${job.status}`, "data-testid": "job-status" }, label),
        job.status === "finished" ? h("span", {}, "✔ ", ...links) : links.length ? h("span", { class: "small" }, ...links) : null),
      job.error ? h("div", { class: "error" }, job.error) : null,
      h("pre", { "data-testid": "job-log" }, job.log_tail || "(no output yet)")));
    const pre = box.querySelector("pre");
    pre.scrollTop = pre.scrollHeight;
    if (shownJob !== job.job_id) {  // bring a new job into view once; later updates leave the scroll alone
      shownJob = job.job_id;
      box.scrollIntoView({ block: "end" });
    }
  }

  // ---- recent retrain jobs (GET /api/jobs), below every view -----------------------------------

  let jobsTimer = null;

  async function refreshJobs() {
    if (jobsTimer !== null) { clearTimeout(jobsTimer); jobsTimer = null; }
    let jobs;
    try { jobs = await getJson("/api/jobs"); } catch (e) { return; }
    renderJobs(jobs);
    if (jobs.some((j) => j.status === "queued" || j.status === "running")) jobsTimer = setTimeout(refreshJobs, 2 * POLL_MS);
  }

  function renderJobs(jobs) {
    const panel = clear($("jobs"));
    panel.hidden = !jobs.length;
    if (!jobs.length) return;
    const label = { queued: "queued", running: "running…", finished: "finished", failed: "failed" };
    panel.appendChild(h("div", { class: "panel-head" }, h("h2", {}, "Recent retrain jobs"),
      h("span", { class: "small" }, "Kept by the watcher until it restarts.")));
    panel.appendChild(h("div", { class: "table-wrap" }, h("table", { "data-testid": "jobs-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Status"), h("th", {}, "Run"), h("th", {}, "Dropped"), h("th", {}, "New run"),
        h("th", {}, "Started"), h("th", {}, "Ended"))),
      h("tbody", {}, jobs.map((j) => h("tr", { "data-testid": "jobs-row", "data-job-id": j.job_id, "data-status": j.status },
        h("td", {}, h("span", { class: `badge status-${j.status}` }, label[j.status] || j.status),
          j.error ? h("div", { class: "small" }, j.error) : null),
        h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(j.run_id)}`, class: "mono small" }, j.run_id)),
        h("td", { class: "small" }, j.exclude ? `${j.exclude.length} feature${j.exclude.length === 1 ? "" : "s"}` : `below ${j.drop_below}`),
        h("td", {}, j.new_run_id
          ? [h("a", { href: `#/runs/${encodeURIComponent(j.new_run_id)}`, class: "mono small", "data-testid": "jobs-new-run" }, j.new_run_id),
            j.new_run_url ? [" ", h("a", { href: j.new_run_url, target: "_blank", rel: "noopener noreferrer", class: "small" }, "MLflow ↗")] : null]
          : "—"),
        h("td", { class: "small" }, when(j.started_at || j.created_at)),
        h("td", { class: "small" }, when(j.ended_at))))))));
  }

  // ---- wiring -------------------------------------------------------------------------------------

  function wire() {
    for (const dialog of document.querySelectorAll("dialog")) {
      for (const button of dialog.querySelectorAll("[data-close]")) button.addEventListener("click", () => dialog.close());
    }
    $("open-rank").addEventListener("click", () => {
      const exp = onScreen;
      openRank(exp ? exp.experiment_name : "", exp ? exp.metric : null, exp ? exp.ascending : null, exp ? exp.top_n : null);
    });
    $("open-retrain").addEventListener("click", () => {
      const exp = onScreen;
      openRetrain(exp ? exp.experiment_name : "", exp && window.location.hash.startsWith("#/runs/") ? exp.run_id : "");
    });
    $("rank-form").addEventListener("submit", submitRank);
    $("rank-experiment").addEventListener("change", () => fillMetrics($("rank-experiment").value));
    $("rank-experiment").addEventListener("input", suggestNames);
    $("retrain-experiment").addEventListener("input", suggestNames);
    $("rank-metric").addEventListener("change", () => { $("rank-direction").value = String(guessAscending($("rank-metric").value)); });
    $("rank-dialog").addEventListener("close", () => { if (ranked) { ranked = false; route(); } });
    $("retrain-form").addEventListener("submit", submitRetrain);
    $("retrain-experiment").addEventListener("change", fillRuns);
    $("retrain-run-pick").addEventListener("change", () => {
      if ($("retrain-run-pick").value) { $("retrain-run-id").value = $("retrain-run-pick").value; loadFeatures(); }
    });
    $("retrain-load").addEventListener("click", loadFeatures);
    $("retrain-run-id").addEventListener("input", runIdEdited);
    $("retrain-run-id").addEventListener("change", () => { if ($("retrain-run-id").value.trim() !== loadedRun) loadFeatures(); });
    $("retrain-run-id").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); loadFeatures(); } });
    $("retrain-threshold").addEventListener("input", applyThreshold);
    $("retrain-dialog").addEventListener("close", () => {
      stopPolling();
      if (window.location.hash.startsWith("#/experiments/")) route();
    });
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      if (!$("token-input").value.trim()) return;
      $("token-dialog").close("ok");
    });
    window.addEventListener("hashchange", route);
    route();
  }

  document.addEventListener("DOMContentLoaded", wire);
})();
