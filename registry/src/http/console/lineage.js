// Training sets and lineage: a manifest with its content hash and pinned versions, and the
// graph feature-group version → training set → model version → alias, clickable both ways.

import { api, download, enc, errorBox, get, h, section, table, time } from "/ui/core.js";

export async function trainingSets() {
  const sets = await get("/v1/training-sets");
  return h(
    "div",
    {},
    h("h1", {}, "Training sets"),
    table(
      [
        { label: "id", render: (m) => h("a", { href: `#/training-sets/${enc(m.id)}`, class: "name" }, m.id) },
        { key: "name" },
        { key: "rows" },
        { label: "sha256", render: (m) => h("code", {}, `${m.sha256.slice(0, 16)}…`) },
        { label: "created", render: (m) => time(m.created_at) },
      ],
      [...sets].reverse(),
      { empty: "no training sets yet" },
    ),
  );
}

export async function trainingSet(id) {
  const m = await get(`/v1/training-sets/${enc(id)}`);
  const models = await modelsTrainedOn(m);
  const out = h("div");
  const save = (format, ext) => async () => {
    try {
      const r = await api("GET", `/v1/training-sets/${enc(id)}/data`, { query: { format }, raw: true });
      download(await r.blob(), `${m.name}.${ext}`);
    } catch (e) {
      out.replaceChildren(errorBox(e));
    }
  };
  return h(
    "div",
    {},
    h("h1", { class: "name" }, `${m.name}`),
    h(
      "dl",
      { class: "facts" },
      fact("id", h("code", {}, m.id)),
      fact("content SHA-256", h("code", { id: "ts-sha256" }, m.sha256)),
      fact("rows", m.rows),
      fact("bytes", m.bytes),
      fact("spine", m.spine_sql ? h("code", {}, m.spine_sql) : h("code", {}, `upload ${m.spine_upload}`)),
      fact("spine versions", (m.spine_versions || []).join(", ")),
      fact("semantics", m.semantics),
      fact("created", `${time(m.created_at)} by ${m.created_by}`),
    ),
    section(
      "Pinned feature versions",
      table(
        [
          { key: "group", render: (f) => h("a", { href: `#/lineage/group/${enc(f.group)}/${f.version}` }, f.group) },
          { key: "feature" },
          { key: "version" },
          { label: "ttl (s)", render: (f) => f.ttl_seconds ?? "" },
        ],
        m.features,
      ),
    ),
    section("Lineage", graph(columnsFor(m, models))),
    h("div", { class: "row" }, h("button", { type: "button", onclick: save("parquet", "parquet") }, "Download Parquet"), h("button", { type: "button", onclick: save("arrow", "arrow") }, "Download Arrow"), h("button", { type: "button", onclick: save("csv", "csv") }, "Download CSV")),
    out,
  );
}

function fact(k, v) {
  return [h("dt", {}, k), h("dd", {}, v)];
}

async function modelsTrainedOn(m) {
  const groups = [...new Set(m.features.map((f) => f.group))];
  if (!groups.length) return [];
  const l = await get(`/v1/feature-groups/${enc(groups[0])}/lineage`).catch(() => ({ model_versions: [] }));
  return l.model_versions.filter((v) => v.training_set_id === m.id);
}

function unique(items, key) {
  const seen = new Set();
  return items.filter((i) => !seen.has(key(i)) && seen.add(key(i)));
}

function columnsFor(m, models) {
  const groups = unique(m.features, (f) => `${f.group}@${f.version}`).map((f) => ({ label: `${f.group} v${f.version}`, href: `#/lineage/group/${enc(f.group)}/${f.version}`, kind: "group" }));
  return [groups, [{ label: m.name, sub: m.id, href: `#/training-sets/${enc(m.id)}`, kind: "set" }], models.map((v) => ({ label: `${v.model} v${v.version}`, href: `#/lineage/model/${enc(v.model)}/${v.version}`, kind: "model" }))];
}

// Model version → its training set → the feature-group versions it pinned; and its aliases.
export async function ofModel(name, version) {
  const [l, v] = await Promise.all([get(`/v1/models/${enc(name)}/versions/${version}/lineage`), get(`/v1/models/${enc(name)}/versions/${version}`)]);
  const groups = unique(l.feature_groups || [], (f) => `${f.group}@${f.version}`).map((f) => ({ label: `${f.group} v${f.version}`, href: `#/lineage/group/${enc(f.group)}/${f.version}`, kind: "group" }));
  const set = l.training_set ? [{ label: l.training_set.name, sub: l.training_set.id, href: `#/training-sets/${enc(l.training_set.id)}`, kind: "set" }] : [];
  const model = [{ label: `${name} v${version}`, href: `#/models/${enc(name)}`, kind: "model" }];
  const aliases = (v.aliases || []).map((a) => ({ label: `@${a}`, href: `#/models/${enc(name)}`, kind: "alias" }));
  return h(
    "div",
    {},
    h("h1", {}, "Lineage of ", h("span", { class: "name" }, `${name} v${version}`)),
    h("p", { class: "meta" }, `source ${l.source} · artifact sha256 `, h("code", {}, l.artifact_sha256)),
    graph([groups, set, model, aliases]),
  );
}

// Feature-group version → the training sets that read it → the model versions trained on them.
export async function ofGroup(name, version) {
  const l = await get(`/v1/feature-groups/${enc(name)}/lineage`, { query: { version } });
  const sets = l.training_sets.map((s) => ({ label: s.name, sub: s.id, href: `#/training-sets/${enc(s.id)}`, kind: "set" }));
  const models = l.model_versions.map((v) => ({ label: `${v.model} v${v.version}`, href: `#/lineage/model/${enc(v.model)}/${v.version}`, kind: "model" }));
  return h(
    "div",
    {},
    h("h1", {}, "Lineage of ", h("span", { class: "name" }, `${name} v${version}`)),
    h("p", {}, h("a", { href: `#/groups/${enc(name)}?v=${version}` }, `Open ${name} at version ${version}`)),
    graph([[{ label: `${name} v${version}`, href: `#/groups/${enc(name)}?v=${version}`, kind: "group" }], sets, models]),
  );
}

// Columns of nodes left to right, each node linked; every node joins every node of the next
// column (lineage here is a chain of layers).
function graph(columns) {
  const cols = columns.filter((c) => c.length);
  const colW = 230;
  const nodeH = 44;
  const gap = 16;
  const height = Math.max(1, ...cols.map((c) => c.length)) * (nodeH + gap) + gap;
  const width = cols.length * colW;
  const pos = cols.map((c, i) => c.map((_, j) => ({ x: i * colW + 10, y: gap + j * (nodeH + gap) + ((height - c.length * (nodeH + gap)) / 2) })));
  const svg = h("svg", { viewBox: `0 0 ${width} ${height}`, class: "graph", id: "lineage-graph", role: "group", "aria-label": "lineage graph" });
  for (let i = 0; i + 1 < cols.length; i++) {
    for (const a of pos[i]) {
      for (const b of pos[i + 1]) {
        svg.append(h("path", { class: "edge", d: `M${a.x + colW - 40},${a.y + nodeH / 2} C${a.x + colW - 10},${a.y + nodeH / 2} ${b.x - 20},${b.y + nodeH / 2} ${b.x},${b.y + nodeH / 2}` }));
      }
    }
  }
  cols.forEach((c, i) =>
    c.forEach((n, j) => {
      const { x, y } = pos[i][j];
      const label = n.label.length > 26 ? `${n.label.slice(0, 25)}…` : n.label;
      svg.append(
        h(
          "svg:a",
          { href: n.href, class: `node ${n.kind}`, "data-label": n.label },
          h("rect", { x, y, width: colW - 40, height: nodeH, rx: 8 }),
          h("text", { x: x + 10, y: y + (n.sub ? 18 : 27) }, label),
          n.sub ? h("text", { x: x + 10, y: y + 35, class: "sub" }, n.sub.length > 30 ? `${n.sub.slice(0, 29)}…` : n.sub) : null,
          h("title", {}, n.sub ? `${n.label} (${n.sub})` : n.label),
        ),
      );
    }),
  );
  return h("div", { class: "scroll" }, svg);
}
