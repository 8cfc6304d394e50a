// Models and training jobs: versions with metrics and their signatures checked here in the
// browser, aliases with their history and "which version at time T", canaries and why they
// ended, drift per input; jobs with live progress from their event stream.

import { api, barChart, enc, errorBox, get, h, lineChart, section, session, table, time } from "/ui/core.js";
import { openNote, parseVerifierKey } from "/ui/notes.js";

export async function list() {
  const models = await get("/v1/models");
  return h(
    "div",
    {},
    h("h1", {}, "Models"),
    table(
      [
        { label: "name", render: (m) => h("a", { href: `#/models/${enc(m.name)}`, class: "name" }, m.name) },
        { key: "description" },
        { key: "latest_version", label: "latest" },
        { label: "aliases", render: (m) => h("span", { class: "chips" }, Object.entries(m.aliases || {}).map(([a, v]) => h("span", { class: "chip" }, `@${a} → v${v}`))) },
        { label: "created", render: (m) => time(m.created_at) },
      ],
      models,
      { empty: "no models yet" },
    ),
  );
}

// The signature of a version, checked here: a signed note by one of the server's
// model-signing keys, over this tenant/model and the artifact's SHA-256.
async function signatureStatus(v, keys, tenant) {
  try {
    const text = await openNote(v.signature, keys);
    const want = `lakeledger model artifact\n${tenant}/${v.model}\nsha256:${v.artifact_sha256}\n`;
    if (text !== want) return { ok: false, why: "the signed statement names another artifact" };
    return { ok: true, why: `signed by ${v.signing_key_id}` };
  } catch (e) {
    return { ok: false, why: e.message };
  }
}

export async function detail(name) {
  const [m, versions, signing] = await Promise.all([get(`/v1/models/${enc(name)}`), get(`/v1/models/${enc(name)}/versions`), get("/v1/models/signing-keys")]);
  let keys = [];
  let keyError = null;
  try {
    keys = await Promise.all([signing.current, ...(signing.previous || [])].map(parseVerifierKey));
  } catch (e) {
    keyError = e.message;
  }
  const tenant = session.who?.tenant;
  const statuses = await Promise.all(versions.map((v) => (keyError ? { ok: false, why: keyError } : signatureStatus(v, keys, tenant))));
  const aliases = Object.keys(m.aliases || {});
  const histories = await Promise.all(aliases.map((a) => get(`/v1/models/${enc(name)}/aliases/${enc(a)}/history`)));
  const canaries = await Promise.all(aliases.map((a) => get(`/v1/models/${enc(name)}/aliases/${enc(a)}/canary`).catch(() => [])));

  const metricNames = [...new Set(versions.flatMap((v) => Object.keys(v.metrics || {}).filter((k) => typeof v.metrics[k] === "number")))].slice(0, 5);
  const versionsTable = table(
    [
      { key: "version", render: (v) => h("a", { href: `#/lineage/model/${enc(name)}/${v.version}` }, `v${v.version}`) },
      { key: "state" },
      { key: "source" },
      ...metricNames.map((k) => ({ label: k, render: (v) => (typeof v.metrics?.[k] === "number" ? v.metrics[k].toFixed(4) : "") })),
      {
        label: "signature",
        render: (v) => {
          const s = statuses[versions.indexOf(v)];
          return h("span", { class: s.ok ? "ok" : "bad", title: s.why, "data-signature": s.ok ? "verified" : "failed" }, s.ok ? "✓ verified" : `✗ failed: ${s.why}`);
        },
      },
      { label: "aliases", render: (v) => (v.aliases || []).map((a) => `@${a}`).join(" ") },
      { label: "created", render: (v) => time(v.created_at) },
    ],
    versions,
  );

  // Which version an alias pointed at, at a time.
  const atOut = h("p", { id: "alias-at-result", "aria-live": "polite" });
  const atForm = h(
    "form",
    { class: "row", id: "alias-at" },
    h("label", {}, "alias ", h("select", { name: "alias" }, aliases.map((a) => h("option", { value: a }, a)))),
    h("label", {}, "at ", h("input", { name: "at", type: "text", placeholder: "2026-01-01T00:00:00Z", required: true, size: 22 })),
    h("button", { type: "submit" }, "Which version?"),
  );
  atForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(atForm);
    try {
      const v = await get(`/v1/models/${enc(name)}/aliases/${enc(f.get("alias"))}`, { query: { at: f.get("at") } });
      atOut.replaceChildren(`@${f.get("alias")} pointed at version ${v.version} at ${f.get("at")}`);
    } catch (e) {
      atOut.replaceChildren(errorBox(e));
    }
  });

  const driftOut = h("div", { id: "drift" });
  const driftForm = h(
    "form",
    { class: "row" },
    h("label", {}, "version ", h("select", { name: "version" }, versions.map((v) => h("option", { value: v.version }, `v${v.version}`)))),
    h("button", { type: "submit" }, "Show drift"),
  );
  driftForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = new FormData(driftForm).get("version");
    try {
      const d = await get(`/v1/models/${enc(name)}/versions/${v}/drift`);
      driftOut.replaceChildren(
        h("p", { class: "meta" }, `${d.current_rows} scored rows (${d.current_source}) against ${d.baseline_rows} training rows; ${d.drifted?.length ? `drifted: ${d.drifted.join(", ")}` : "nothing drifted"}`),
        barChart(d.features.map((f) => ({ label: f.name, value: f.psi, flagged: (f.psi ?? 0) > d.psi_threshold })), { threshold: d.psi_threshold, label: "PSI per input" }),
        barChart(d.features.map((f) => ({ label: f.name, value: f.ks, flagged: (f.ks ?? 0) > d.ks_threshold })), { threshold: d.ks_threshold, label: "KS per input" }),
      );
    } catch (e) {
      driftOut.replaceChildren(errorBox(e));
    }
  });

  return h(
    "div",
    {},
    h("h1", { class: "name" }, m.name),
    m.description ? h("p", {}, m.description) : null,
    section("Versions", versionsTable),
    section(
      "Aliases",
      aliases.length
        ? aliases.map((a, i) =>
            h(
              "div",
              { class: "alias" },
              h("h3", {}, `@${a} → v${m.aliases[a]}`),
              h(
                "ol",
                { class: "timeline" },
                [...histories[i]].reverse().map((mv) =>
                  h("li", {}, h("time", {}, time(mv.moved_at)), h("span", {}, `v${mv.from_version ?? "—"} → v${mv.to_version ?? "—"}`), h("span", { class: "actor name" }, mv.actor), mv.reason ? h("q", {}, mv.reason) : null),
                ),
              ),
              canaries[i].length
                ? table(
                    [
                      { key: "version", label: "canary version" },
                      { key: "percent" },
                      { label: "started", render: (c) => time(c.started_at) },
                      { label: "ended", render: (c) => (c.ended_at ? time(c.ended_at) : "running") },
                      { key: "end_reason", label: "why it ended" },
                    ],
                    canaries[i],
                  )
                : h("p", { class: "meta" }, "no canary"),
            ),
          )
        : h("p", { class: "empty" }, "no aliases"),
      aliases.length ? atForm : null,
      atOut,
    ),
    section("Drift", driftForm, driftOut),
  );
}

export async function jobs() {
  const all = await get("/v1/training-jobs");
  return h(
    "div",
    {},
    h("h1", {}, "Training jobs"),
    table(
      [
        { label: "id", render: (j) => h("a", { href: `#/jobs/${enc(j.id)}`, class: "name" }, j.id) },
        { key: "model" },
        { key: "state" },
        { label: "version", render: (j) => (j.model_version ? `v${j.model_version}` : "") },
        { label: "created", render: (j) => time(j.created_at) },
      ],
      [...all].reverse(),
      { empty: "no training jobs yet" },
    ),
  );
}

const TERMINAL = ["succeeded", "failed", "cancelled"];

// One job, followed live: the event stream is read with fetch (EventSource cannot send the
// key), each report adds a point to the loss chart.
export async function job(id) {
  const first = await get(`/v1/training-jobs/${enc(id)}`);
  const points = { train: [], validation: [] };
  const state = h("strong", { id: "job-state" }, first.state);
  const progress = h("p", { id: "job-progress", "aria-live": "polite" });
  const chart = h("div", { id: "job-chart" });
  const result = h("div");
  const update = (j) => {
    state.textContent = j.state;
    const p = j.progress;
    if (p && Number.isFinite(p.epoch)) {
      if (!points.train.some(([e]) => e === p.epoch)) {
        points.train.push([p.epoch, p.train_loss]);
        points.validation.push([p.epoch, p.validation_loss]);
      }
      const metrics = Object.entries(p.validation || {})
        .filter(([, v]) => typeof v === "number")
        .map(([k, v]) => `${k} ${v.toFixed(4)}`)
        .join(" · ");
      progress.textContent = `epoch ${p.epoch}/${p.max_epochs} · train loss ${p.train_loss?.toFixed(4)} · validation loss ${p.validation_loss?.toFixed(4)}${metrics ? ` · ${metrics}` : ""}`;
    }
    chart.replaceChildren(lineChart([{ name: "train loss", points: points.train }, { name: "validation loss", points: points.validation }], { xLabel: "epoch", yLabel: "loss" }));
    if (TERMINAL.includes(j.state)) {
      result.replaceChildren(
        j.model_version ? h("p", {}, "Registered ", h("a", { href: `#/lineage/model/${enc(j.model)}/${j.model_version}` }, `${j.model} v${j.model_version}`)) : null,
        j.error ? h("p", { class: "error" }, j.error) : null,
      );
    }
  };
  update(first);
  const view = h(
    "div",
    {},
    h("h1", {}, "Job ", h("span", { class: "name" }, id)),
    h("p", {}, `model ${first.model} · label ${first.label} · `, state),
    progress,
    chart,
    result,
  );
  if (!TERMINAL.includes(first.state)) follow(id, update, view).catch((e) => result.replaceChildren(errorBox(e)));
  return view;
}

async function follow(id, update, view) {
  const r = await api("GET", `/v1/training-jobs/${enc(id)}/events`, { accept: "text/event-stream", raw: true });
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    // Stop reading once the page shows something else.
    if (!view.isConnected && buffer !== null) {
      await reader.cancel();
      return;
    }
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart())
        .join("\n");
      if (data) update(JSON.parse(data));
    }
  }
  update(await get(`/v1/training-jobs/${enc(id)}`));
}
