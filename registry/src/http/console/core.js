// What every page of the console shares: the session (a key kept for this tab only), calls
// to the public API with the one error body turned into an exception, element building,
// tables, charts and downloads. The console calls only the public API, so every view is
// authorized, tenant-scoped and recorded in the audit ledger like any other client.

const KEY = "lakeledger.key";
const WHO = "lakeledger.who";

export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  get who() {
    try {
      return JSON.parse(sessionStorage.getItem(WHO));
    } catch {
      return null;
    }
  },
  set(key, who) {
    sessionStorage.setItem(KEY, key);
    sessionStorage.setItem(WHO, JSON.stringify(who));
  },
  clear() {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(WHO);
  },
};

// What each role may see; pages and actions a role may not use are not offered.
export const can = {
  readData: (who) => ["admin", "writer", "reader"].includes(who?.role),
  audit: (who) => who?.role === "auditor",
  admin: (who) => who?.role === "admin",
};

export class ApiError extends Error {
  constructor(status, code, message, errorId) {
    super(message);
    this.status = status;
    this.code = code;
    this.errorId = errorId;
  }
}

function withQuery(path, query) {
  if (!query) return path;
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== "") q.append(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

// One call to the API. `raw` returns the Response (headers, blobs, streams).
export async function api(method, path, { json, accept = "application/json", query, raw = false, key } = {}) {
  const headers = { Accept: accept };
  const secret = key ?? session.key;
  if (secret) headers.Authorization = `Bearer ${secret}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let r;
  try {
    r = await fetch(withQuery(path, query), { method, headers, body });
  } catch (e) {
    throw new ApiError(0, "unreachable", `the server could not be reached: ${e.message}`);
  }
  if (!r.ok) {
    let e = null;
    try {
      e = (await r.json()).error;
    } catch {
      /* not the error body */
    }
    throw new ApiError(r.status, e?.code ?? `http_${r.status}`, e?.message ?? r.statusText, e?.error_id);
  }
  if (raw) return r;
  const text = await r.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, opts) => api("GET", path, opts);
export const post = (path, json, opts = {}) => api("POST", path, { ...opts, json });
export const enc = encodeURIComponent;

// Builds an element: h("a", {href: "#/x", class: "c", onclick: f}, "text", child, [more]).
export function h(tag, attrs = {}, ...children) {
  // SVG elements by name; "svg:a" is a link inside a drawing.
  const svg = tag.startsWith("svg:") || ["svg", "g", "rect", "path", "line", "polyline", "circle", "text", "title"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag.replace(/^svg:/, "")) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function errorBox(e) {
  const id = e.errorId ? ` (error id ${e.errorId})` : "";
  return h("div", { class: "error", role: "alert" }, h("strong", {}, e.code || "error"), `: ${e.message}${id}`);
}

// Runs `work` when the form is submitted, showing its error in `out` if it fails.
export function onSubmit(form, out, work) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    try {
      await work(new FormData(form));
    } catch (e) {
      out.replaceChildren(errorBox(e));
    } finally {
      if (button) button.disabled = false;
    }
  });
}

export function cell(v) {
  if (v === null || v === undefined) return h("span", { class: "null" }, "null");
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

// A table in a scrolling box. Columns: names, or {key, label, render(row)}.
export function table(columns, rows, { caption, empty = "nothing here yet" } = {}) {
  const cols = columns.map((c) => (typeof c === "string" ? { key: c, label: c } : c));
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h(
    "div",
    { class: "scroll", tabindex: "0" },
    h(
      "table",
      {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c.label ?? c.key)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, cols.map((c) => h("td", {}, c.render ? c.render(r) : cell(r[c.key])))))),
    ),
  );
}

export function section(title, ...children) {
  return h("section", {}, h("h2", {}, title), children);
}

export function chips(tags) {
  return h("span", { class: "chips" }, Object.entries(tags || {}).map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`)));
}

export function time(s) {
  if (!s) return "";
  const d = new Date(s);
  return Number.isNaN(d.getTime()) ? String(s) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function download(blob, filename) {
  const a = h("a", { href: URL.createObjectURL(blob), download: filename });
  document.body.append(a);
  a.click();
  setTimeout(() => {
    URL.revokeObjectURL(a.href);
    a.remove();
  }, 1000);
}

// A line chart of one or more series [{name, points: [[x, y]...]}], drawn as SVG.
export function lineChart(series, { width = 560, height = 220, xLabel = "", yLabel = "" } = {}) {
  const pad = { l: 48, r: 12, t: 12, b: 32 };
  const all = series.flatMap((s) => s.points);
  const svg = h("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": `${yLabel} by ${xLabel}` });
  if (!all.length) {
    svg.append(h("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no data yet"));
    return svg;
  }
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]).filter(Number.isFinite);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  const [y0, y1] = [Math.min(0, ...ys), Math.max(...ys, 1e-9)];
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const Y = (y) => height - pad.b - ((y - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  svg.append(
    h("line", { x1: pad.l, y1: height - pad.b, x2: width - pad.r, y2: height - pad.b, class: "axis" }),
    h("line", { x1: pad.l, y1: pad.t, x2: pad.l, y2: height - pad.b, class: "axis" }),
    h("text", { x: pad.l - 6, y: pad.t + 8, "text-anchor": "end", class: "tick" }, y1.toPrecision(3)),
    h("text", { x: pad.l - 6, y: height - pad.b, "text-anchor": "end", class: "tick" }, y0.toPrecision(3)),
    h("text", { x: width / 2, y: height - 6, "text-anchor": "middle", class: "tick" }, `${xLabel} ${x0}–${x1}`),
  );
  series.forEach((s, i) => {
    const pts = s.points.filter((p) => Number.isFinite(p[1])).map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
    svg.append(h("polyline", { points: pts, class: `series s${i}` }, h("title", {}, s.name)));
    svg.append(h("text", { x: width - pad.r, y: pad.t + 14 * (i + 1), "text-anchor": "end", class: `legend s${i}` }, s.name));
  });
  return svg;
}

// Horizontal bars [{label, value, flagged}] with an optional threshold line.
export function barChart(items, { threshold, label = "" } = {}) {
  const rowH = 22;
  const width = 560;
  const labelW = 200;
  const height = items.length * rowH + 24;
  const max = Math.max(threshold ?? 0, ...items.map((i) => i.value ?? 0), 1e-9);
  const X = (v) => labelW + (v / max) * (width - labelW - 60);
  const svg = h("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": label });
  items.forEach((it, i) => {
    const y = i * rowH + 4;
    svg.append(
      h("text", { x: labelW - 6, y: y + 14, "text-anchor": "end", class: "tick" }, it.label.length > 28 ? `${it.label.slice(0, 27)}…` : it.label),
      h("rect", { x: labelW, y, width: Math.max(1, X(it.value ?? 0) - labelW), height: rowH - 6, class: it.flagged ? "bar flagged" : "bar" }),
      h("text", { x: X(it.value ?? 0) + 4, y: y + 14, class: "tick" }, it.value === null || it.value === undefined ? "n/a" : it.value.toFixed(3)),
    );
  });
  if (threshold !== undefined) {
    svg.append(h("line", { x1: X(threshold), y1: 0, x2: X(threshold), y2: height - 20, class: "threshold" }, h("title", {}, `threshold ${threshold}`)));
  }
  svg.append(h("text", { x: labelW, y: height - 4, class: "tick" }, label));
  return svg;
}
