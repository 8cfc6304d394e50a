// The audit trail, for auditors: records by filter, a record's inclusion proof checked here
// against a signed checkpoint (Ed25519 and SHA-256 by WebCrypto, showing each check), and
// the checkpoint history.

import { errorBox, get, h, section, table, time } from "/ui/core.js";
import { b64ToBytes, bytesToHex, equal, hexToBytes, leafHash, openCheckpoint, parseVerifierKey, rootFromInclusion } from "/ui/notes.js";

const FILTERS = [
  ["action", "action, e.g. data.write"],
  ["actor", "actor (key id)"],
  ["resource", "resource name"],
  ["since", "since (RFC 3339)"],
  ["until", "until (RFC 3339)"],
  ["from_seq", "from seq"],
];

export async function view(query) {
  const filters = Object.fromEntries(FILTERS.map(([k]) => [k, query.get(k) || ""]));
  const [page, checkpoints] = await Promise.all([
    get("/v1/audit/records", { query: { ...filters, limit: 100 } }),
    get("/v1/audit/checkpoints", { query: { limit: 20 } }).catch(() => []),
  ]);
  const detail = h("div", { id: "record-detail" });
  const form = h(
    "form",
    { class: "row filters", id: "audit-filters" },
    FILTERS.map(([k, label]) => h("label", {}, `${label} `, h("input", { name: k, value: filters[k], size: 16 }))),
    h("button", { type: "submit" }, "Search"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams([...new FormData(form)].filter(([, v]) => v));
    location.hash = `#/audit?${q}`;
  });
  const rows = page.records.map((r) => ({ ...r, v: r.payload || {} }));
  return h(
    "div",
    {},
    h("h1", {}, "Audit trail"),
    h("p", { class: "meta" }, `${page.log_size} records in the log`),
    form,
    table(
      [
        { label: "seq", render: (r) => h("button", { type: "button", class: "link", "data-seq": r.seq, onclick: () => showRecord(r, detail) }, String(r.seq)) },
        { label: "time", render: (r) => time(new Date(Number(r.ts_unix_ns) / 1e6).toISOString()) },
        { label: "action", render: (r) => r.v.kind ?? r.record_type },
        { label: "phase", render: (r) => r.v.phase ?? "" },
        { label: "actor", render: (r) => h("span", { class: "name" }, r.v.actor?.principal ?? r.v.actor?.principal_type ?? "") },
        { label: "resource", render: (r) => h("span", { class: "name" }, [r.v.resource?.kind, r.v.resource?.name].filter(Boolean).join(" ")) },
        { label: "result", render: (r) => r.v.outcome ? `${r.v.outcome.result} ${r.v.outcome.status}` : "" },
      ],
      rows,
      { empty: "no records match" },
    ),
    page.next_seq !== null && page.next_seq !== undefined ? h("p", {}, h("a", { href: `#/audit?${new URLSearchParams({ ...Object.fromEntries(Object.entries(filters).filter(([, v]) => v)), from_seq: page.next_seq })}` }, "Next page")) : null,
    detail,
    section(
      "Checkpoints",
      table(
        [
          { key: "size" },
          { label: "signed", render: (c) => time(c.signed_at) },
          { label: "root", render: (c) => h("code", {}, c.root) },
        ],
        [...checkpoints].reverse(),
      ),
    ),
  );
}

async function showRecord(r, out) {
  const proofBox = h("textarea", { id: "proof-json", rows: 8, spellcheck: "false", "aria-label": "inclusion proof (JSON)" });
  const steps = h("ol", { id: "verify-steps", class: "steps", "aria-live": "polite" });
  const verdict = h("p", { id: "verify-result", "aria-live": "polite" });
  const context = {};
  out.replaceChildren(
    h("h2", {}, `Record ${r.seq}`),
    h("pre", { class: "json" }, JSON.stringify({ record_type: r.record_type, prev_leaf: r.prev_leaf, ...r.payload }, null, 2)),
    h("p", {}, "Leaf hash ", h("code", {}, r.leaf_hash)),
    h("button", { type: "button", id: "verify-inclusion", onclick: () => load().catch((e) => verdict.replaceChildren(errorBox(e))) }, "Verify inclusion"),
    h("div", { class: "proof" }, h("label", { for: "proof-json" }, "Inclusion proof (as served; edit it to see a changed proof fail)"), proofBox),
    h("button", { type: "button", id: "verify-again", onclick: () => check().catch((e) => verdict.replaceChildren(errorBox(e))) }, "Check this proof"),
    steps,
    verdict,
  );
  out.scrollIntoView?.({ block: "start" });

  // Fetches what the check needs: the log's keys, the latest signed checkpoint, the proof.
  async function load() {
    const [keys, cp] = await Promise.all([get("/v1/audit/public-key"), get("/v1/audit/checkpoints/latest")]);
    if (r.seq >= cp.size) {
      verdict.replaceChildren(`The latest signed checkpoint covers records below ${cp.size}; record ${r.seq} is newer. Checkpoints are signed every few seconds: try again shortly.`);
      return;
    }
    const proof = await get("/v1/audit/proofs/inclusion", { query: { seq: r.seq, size: cp.size } });
    Object.assign(context, { keys: [keys.key, ...(keys.history || [])], note: cp.note });
    proofBox.value = JSON.stringify(proof, null, 2);
    await check();
  }

  // Checks the proof in the box against the record and the signed checkpoint.
  async function check() {
    if (!context.note) return load();
    steps.replaceChildren();
    const step = (ok, text) => steps.append(h("li", { class: ok ? "ok" : "bad" }, `${ok ? "✓" : "✗"} ${text}`));
    const fail = (text) => {
      step(false, text);
      verdict.replaceChildren(h("strong", { class: "bad", "data-verdict": "failed" }, "Not verified"), `: ${text}`);
    };
    let proof;
    try {
      proof = JSON.parse(proofBox.value);
    } catch (e) {
      return fail(`the proof is not JSON: ${e.message}`);
    }
    let cp;
    try {
      const keys = await Promise.all([...new Set(context.keys)].map(parseVerifierKey));
      cp = await openCheckpoint(context.note, keys);
      step(true, `checkpoint of size ${cp.size} is signed (Ed25519) by the log's key ${keys[0].name}`);
    } catch (e) {
      return fail(`checkpoint signature: ${e.message}`);
    }
    if (proof.size !== cp.size) return fail(`the proof is for size ${proof.size}, the checkpoint for ${cp.size}`);
    const leaf = await leafHash(b64ToBytes(r.leaf));
    if (bytesToHex(leaf) !== r.leaf_hash) return fail("the record's bytes do not hash to its leaf hash");
    step(true, `the record's bytes hash (SHA-256, RFC 9162 leaf) to ${r.leaf_hash.slice(0, 16)}…`);
    let root;
    try {
      root = await rootFromInclusion(r.seq, cp.size, leaf, proof.proof.map(hexToBytes));
    } catch (e) {
      return fail(`inclusion proof: ${e.message}`);
    }
    if (!equal(root, cp.root)) return fail(`the proof leads to root ${bytesToHex(root).slice(0, 16)}…, the signed checkpoint says ${bytesToHex(cp.root).slice(0, 16)}…`);
    step(true, `the ${proof.proof.length}-hash inclusion proof leads to the signed root ${bytesToHex(cp.root).slice(0, 16)}…`);
    verdict.replaceChildren(h("strong", { class: "ok", "data-verdict": "verified" }, "Verified"), `: record ${r.seq} is in the log the checkpoint of size ${cp.size} commits to.`);
  }
}


