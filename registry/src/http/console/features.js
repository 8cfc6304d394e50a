// Feature groups: the list, and one group's schema, version timeline, data at any version
// or time, and the difference between two versions.

import { chips, enc, errorBox, get, h, onSubmit, section, table, time } from "/ui/core.js";

// Rows compared in a diff, per side: enough for a look, not a bulk export.
const DIFF_ROWS = 100000;

export async function list() {
  const groups = await get("/v1/feature-groups");
  const out = h("div");
  const search = h("input", { type: "search", id: "group-search", placeholder: "Search names, descriptions, owners, tags", "aria-label": "Search feature groups" });
  const render = () => {
    const q = search.value.trim().toLowerCase();
    const shown = groups.filter((g) =>
      [g.name, g.description, g.owner, ...Object.entries(g.tags || {}).map(([k, v]) => `${k}=${v}`)].some((s) => (s || "").toLowerCase().includes(q)),
    );
    out.replaceChildren(
      table(
        [
          { label: "name", render: (g) => h("a", { href: `#/groups/${enc(g.name)}`, class: "name" }, g.name) },
          { key: "description" },
          { label: "tags", render: (g) => chips(g.tags) },
          { key: "current_version", label: "version" },
          { key: "row_count", label: "rows" },
          { label: "online", render: (g) => (g.online ? "yes" : "") },
          { key: "owner" },
        ],
        shown,
        { empty: q ? "no feature group matches" : "no feature groups yet" },
      ),
    );
  };
  search.addEventListener("input", render);
  render();
  return h("div", {}, h("h1", {}, "Feature groups"), search, out);
}

function readQuery(v, asOf, limit) {
  return { version: v === "" ? undefined : v, as_of: asOf || undefined, limit, format: "json" };
}

export async function detail(name, query) {
  const [g, versions] = await Promise.all([get(`/v1/feature-groups/${enc(name)}`), get(`/v1/feature-groups/${enc(name)}/versions`)]);
  const since = {};
  for (const v of versions) for (const c of v.columns_added || []) since[c] ??= v.version;
  const keys = g.entity_keys.map((k) => k.name);
  const columns = [
    ...g.entity_keys.map((k) => ({ ...k, role: "entity key" })),
    { name: g.event_time, type: "timestamp", role: "event time" },
    ...g.features.map((f) => ({ ...f, role: "feature" })),
  ];

  const versionOptions = (selected) => versions.map((v) => h("option", { value: v.version, selected: String(v.version) === String(selected) }, `v${v.version} · ${v.operation}`));

  // Data at a version or a time.
  const previewOut = h("div", { id: "preview" });
  const previewForm = h(
    "form",
    { class: "row", id: "preview-form" },
    h("label", {}, "version ", h("select", { name: "version", id: "preview-version" }, h("option", { value: "" }, "latest"), versionOptions(query.get("v")))),
    h("label", {}, "or as of ", h("input", { name: "as_of", type: "text", placeholder: "2026-01-01T00:00:00Z", size: 22 })),
    h("button", { type: "submit" }, "Show"),
  );
  const showPreview = async (v, asOf) => {
    const rows = await get(`/v1/feature-groups/${enc(name)}/data`, { query: readQuery(v, asOf, 200) });
    previewOut.replaceChildren(
      h("p", { class: "meta" }, `${rows.length} row(s)${rows.length === 200 ? " (first 200)" : ""} at ${v !== "" ? `version ${v}` : asOf ? `as of ${asOf}` : "the latest version"}`),
      table(columns.map((c) => c.name), rows, { empty: "no rows at this version" }),
    );
  };
  onSubmit(previewForm, previewOut, (f) => showPreview(f.get("version"), f.get("as_of")));

  // The difference between two versions, by entity keys and event time.
  const diffOut = h("div", { id: "diff" });
  const last = versions.at(-1)?.version ?? 0;
  const diffForm = h(
    "form",
    { class: "row", id: "diff-form" },
    h("label", {}, "from ", h("select", { name: "a", id: "diff-a" }, versionOptions(Math.max(0, last - 1)))),
    h("label", {}, "to ", h("select", { name: "b", id: "diff-b" }, versionOptions(last))),
    h("button", { type: "submit" }, "Compare"),
  );
  onSubmit(diffForm, diffOut, async (f) => {
    const [a, b] = [f.get("a"), f.get("b")];
    const [ra, rb] = await Promise.all(
      [a, b].map((v) => get(`/v1/feature-groups/${enc(name)}/data`, { query: readQuery(v, "", DIFF_ROWS) })),
    );
    diffOut.replaceChildren(renderDiff(ra, rb, [...keys, g.event_time], columns.map((c) => c.name), a, b));
  });

  const timeline = h(
    "ol",
    { class: "timeline", id: "timeline" },
    [...versions].reverse().map((v) =>
      h(
        "li",
        {},
        h("span", { class: "version" }, `v${v.version}`),
        h("span", { class: "op" }, v.operation),
        v.rows_added !== null && v.rows_added !== undefined ? h("span", {}, `${v.rows_added} rows`) : null,
        h("span", { class: "actor name" }, v.actor),
        h("time", { datetime: v.committed_at }, time(v.committed_at)),
        v.audit_seq !== null && v.audit_seq !== undefined ? h("span", { class: "seq" }, `audit seq ${v.audit_seq}`) : null,
        v.columns_added?.length && v.version > 0 ? h("span", { class: "chip" }, `+ ${v.columns_added.join(", ")}`) : null,
        h("button", { type: "button", class: "link", onclick: () => showPreview(String(v.version), "").catch((e) => previewOut.replaceChildren(errorBox(e))) }, "open"),
        h("a", { href: `#/lineage/group/${enc(name)}/${v.version}` }, "lineage"),
      ),
    ),
  );

  if (query.get("v") !== null) showPreview(query.get("v"), "").catch((e) => previewOut.replaceChildren(errorBox(e)));
  return h(
    "div",
    {},
    h("h1", { class: "name" }, g.name),
    h("p", {}, g.description || h("span", { class: "null" }, "no description"), " ", chips(g.tags)),
    h("p", { class: "meta" }, `owner ${g.owner || "—"} · version ${g.current_version ?? "—"} · ${g.row_count ?? "?"} rows · created ${time(g.created_at)} by `, h("span", { class: "name" }, g.created_by)),
    section(
      "Schema",
      table(
        [
          { key: "name", render: (c) => h("span", { class: "name" }, c.name) },
          { key: "type" },
          { key: "role" },
          { label: "since version", render: (c) => (since[c.name] ?? 0).toString() },
        ],
        columns,
      ),
    ),
    section("Versions", timeline),
    section("Data", previewForm, previewOut),
    section("Compare versions", diffForm, diffOut),
  );
}

// Rows added, removed and changed between two reads, keyed by `keyCols`.
export function diffRows(before, after, keyCols, cols) {
  const keyOf = (r) => JSON.stringify(keyCols.map((k) => r[k]));
  const a = new Map(before.map((r) => [keyOf(r), r]));
  const b = new Map(after.map((r) => [keyOf(r), r]));
  const added = after.filter((r) => !a.has(keyOf(r)));
  const removed = before.filter((r) => !b.has(keyOf(r)));
  const changed = [];
  for (const [k, r] of b) {
    const old = a.get(k);
    if (!old) continue;
    const diffs = cols.filter((c) => JSON.stringify(old[c] ?? null) !== JSON.stringify(r[c] ?? null));
    if (diffs.length) changed.push({ key: keyCols.map((c) => r[c]).join(" · "), changes: diffs.map((c) => `${c}: ${JSON.stringify(old[c] ?? null)} → ${JSON.stringify(r[c] ?? null)}`).join("; ") });
  }
  return { added, removed, changed };
}

function renderDiff(before, after, keyCols, cols, a, b) {
  const d = diffRows(before, after, keyCols, cols);
  const capped = before.length >= DIFF_ROWS || after.length >= DIFF_ROWS;
  return h(
    "div",
    {},
    h("p", { class: "summary", id: "diff-summary" }, `v${a} → v${b}: ${d.added.length} added, ${d.removed.length} removed, ${d.changed.length} changed`),
    capped ? h("p", { class: "warn" }, `Only the first ${DIFF_ROWS} rows of each version were compared.`) : null,
    h("h3", {}, "Added"),
    table(cols, d.added, { empty: "none" }),
    h("h3", {}, "Removed"),
    table(cols, d.removed, { empty: "none" }),
    h("h3", {}, "Changed"),
    table(["key", "changes"], d.changed, { empty: "none" }),
  );
}
