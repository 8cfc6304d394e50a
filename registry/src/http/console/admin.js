// Tenants and keys, for admins: list, create, revoke. A new key's secret is shown once.

import { api, enc, errorBox, get, h, onSubmit, post, section, table, time } from "/ui/core.js";

const ROLES = ["reader", "writer", "admin", "auditor"];

export async function view() {
  const [tenants, keys] = await Promise.all([get("/v1/tenants").catch(() => null), get("/v1/keys")]);
  const out = h("div", { id: "admin-result", "aria-live": "polite" });
  const reload = () => window.dispatchEvent(new HashChangeEvent("hashchange"));

  const tenantForm = h("form", { class: "row", id: "tenant-form" }, h("label", {}, "new tenant ", h("input", { name: "name", required: true, size: 20 })), h("button", { type: "submit" }, "Create tenant"));
  onSubmit(tenantForm, out, async (f) => {
    await post("/v1/tenants", { name: f.get("name") });
    reload();
  });
  const keyForm = h(
    "form",
    { class: "row", id: "key-form" },
    h("label", {}, "name ", h("input", { name: "name", required: true, size: 18 })),
    h("label", {}, "role ", h("select", { name: "role" }, ROLES.map((r) => h("option", { value: r }, r)))),
    tenants ? h("label", {}, "tenant ", h("select", { name: "tenant" }, h("option", { value: "" }, "mine"), tenants.map((t) => h("option", { value: t.name }, t.name)))) : null,
    h("button", { type: "submit" }, "Create key"),
  );
  onSubmit(keyForm, out, async (f) => {
    const body = { name: f.get("name"), role: f.get("role") };
    if (f.get("tenant")) body.tenant = f.get("tenant");
    const k = await post("/v1/keys", body);
    out.replaceChildren(h("div", { class: "secret", role: "status" }, `Key ${k.name} (${k.role}, ${k.tenant}): `, h("code", { id: "new-secret" }, k.secret), " — shown only now; copy it."));
  });

  const revoke = (k) =>
    h(
      "button",
      {
        type: "button",
        class: "danger",
        disabled: k.revoked_at ? true : undefined,
        onclick: async () => {
          if (!confirm(`Revoke key ${k.name}? Clients using it stop working at once.`)) return;
          try {
            await api("DELETE", `/v1/keys/${enc(k.id)}`);
            reload();
          } catch (e) {
            out.replaceChildren(errorBox(e));
          }
        },
      },
      k.revoked_at ? "revoked" : "Revoke",
    );

  return h(
    "div",
    {},
    h("h1", {}, "Admin"),
    out,
    tenants ? section("Tenants", table([{ key: "name", render: (t) => h("span", { class: "name" }, t.name) }, { label: "created", render: (t) => time(t.created_at) }], tenants), tenantForm) : null,
    section(
      "API keys",
      table(
        [
          { key: "name", render: (k) => h("span", { class: "name" }, k.name) },
          { key: "role" },
          { key: "id", render: (k) => h("code", {}, k.id) },
          { label: "created", render: (k) => time(k.created_at) },
          { label: "", render: revoke },
        ],
        keys,
      ),
      keyForm,
    ),
  );
}
