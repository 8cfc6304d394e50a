// The SQL editor: time-travel queries over the tenant's feature groups, the result as a
// grid with the exact versions it read, and downloads in CSV, Parquet or Arrow.

import { api, download, errorBox, get, h, section, table } from "/ui/core.js";

const SHOWN = 1000;

export async function view() {
  const groups = await get("/v1/feature-groups").catch(() => []);
  const editor = h("textarea", { id: "sql-editor", rows: 8, spellcheck: "false", "aria-label": "SQL statement" }, groups.length ? `SELECT * FROM ${groups[0].name} LIMIT 100` : "SELECT 1");
  const out = h("div", { id: "sql-result", "aria-live": "polite" });

  const run = async (format) => {
    const r = await api("POST", "/v1/sql", { json: { sql: editor.value, format }, raw: true });
    return { response: r, versions: r.headers.get("x-lakeledger-versions") || "" };
  };
  const show = async () => {
    out.replaceChildren(h("p", { class: "loading" }, "Running…"));
    try {
      const { response, versions } = await run("json");
      const rows = await response.json();
      const cols = rows.length ? Object.keys(rows[0]) : [];
      out.replaceChildren(
        h(
          "div",
          { class: "result-meta" },
          h("span", {}, `${rows.length} row(s)${rows.length > SHOWN ? `, first ${SHOWN} shown` : ""}`),
          h("span", { id: "versions-read" }, "versions read: ", versions ? versions.split(",").map((v) => h("code", {}, v)) : "none"),
        ),
        table(cols, rows.slice(0, SHOWN), { empty: "no rows" }),
      );
    } catch (e) {
      out.replaceChildren(errorBox(e));
    }
  };
  const save = (format, ext) => async () => {
    try {
      const { response } = await run(format);
      download(await response.blob(), `query.${ext}`);
    } catch (e) {
      out.replaceChildren(errorBox(e));
    }
  };
  editor.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      show();
    }
  });
  const insert = (text) => {
    const at = editor.selectionStart ?? editor.value.length;
    editor.setRangeText(text, at, editor.selectionEnd ?? at, "end");
    editor.focus();
  };

  return h(
    "div",
    {},
    h("h1", {}, "SQL"),
    h(
      "details",
      { class: "help" },
      h("summary", {}, "Time travel"),
      h(
        "ul",
        {},
        h("li", {}, h("code", {}, "FROM rides VERSION AS OF 3"), " reads version 3 exactly; a version that does not exist is an error."),
        h("li", {}, h("code", {}, "FROM rides TIMESTAMP AS OF '2026-01-01T00:00:00Z'"), " reads the version current at that time."),
        h("li", {}, "Only one SELECT (CTEs, joins, window functions, EXPLAIN) over your feature groups; everything else is refused and recorded."),
      ),
      h("p", {}, "Insert: ", groups.map((g) => h("button", { type: "button", class: "link", onclick: () => insert(`${g.name} VERSION AS OF ${g.current_version ?? 0}`) }, g.name))),
    ),
    editor,
    h(
      "div",
      { class: "row" },
      h("button", { type: "button", id: "sql-run", onclick: show }, "Run (Ctrl+Enter)"),
      h("button", { type: "button", onclick: save("csv", "csv") }, "Download CSV"),
      h("button", { type: "button", onclick: save("parquet", "parquet") }, "Download Parquet"),
      h("button", { type: "button", onclick: save("arrow", "arrow") }, "Download Arrow"),
    ),
    section("Result", out),
  );
}
