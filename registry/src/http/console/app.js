// The console's shell: sign-in, navigation by role, and a router over the location hash.

import { can, errorBox, get, h, session } from "/ui/core.js";
import * as admin from "/ui/admin.js";
import * as audit from "/ui/audit.js";
import * as features from "/ui/features.js";
import * as lineage from "/ui/lineage.js";
import * as models from "/ui/models.js";
import * as sql from "/ui/sql.js";

const routes = [
  [/^\/groups$/, can.readData, features.list],
  [/^\/groups\/([^/]+)$/, can.readData, features.detail],
  [/^\/sql$/, can.readData, sql.view],
  [/^\/training-sets$/, can.readData, lineage.trainingSets],
  [/^\/training-sets\/([^/]+)$/, can.readData, lineage.trainingSet],
  [/^\/lineage\/model\/([^/]+)\/(\d+)$/, can.readData, lineage.ofModel],
  [/^\/lineage\/group\/([^/]+)\/(\d+)$/, can.readData, lineage.ofGroup],
  [/^\/models$/, can.readData, models.list],
  [/^\/models\/([^/]+)$/, can.readData, models.detail],
  [/^\/jobs$/, can.readData, models.jobs],
  [/^\/jobs\/([^/]+)$/, can.readData, models.job],
  [/^\/audit$/, can.audit, audit.view],
  [/^\/admin$/, can.admin, admin.view],
];

const NAV = [
  ["#/groups", "Feature groups", can.readData],
  ["#/sql", "SQL", can.readData],
  ["#/training-sets", "Training sets", can.readData],
  ["#/models", "Models", can.readData],
  ["#/jobs", "Jobs", can.readData],
  ["#/audit", "Audit", can.audit],
  ["#/admin", "Admin", can.admin],
];

function home(who) {
  return can.readData(who) ? "#/groups" : can.audit(who) ? "#/audit" : "#/signin";
}

function renderNav() {
  const who = session.who;
  const nav = document.getElementById("nav");
  const here = location.hash.split("?")[0];
  nav.replaceChildren(
    ...NAV.filter(([, , allowed]) => who && allowed(who)).map(([href, label]) =>
      h("a", { href, "aria-current": here.startsWith(href) ? "page" : undefined }, label),
    ),
  );
  document.getElementById("who").replaceChildren(
    who ? h("span", {}, h("span", { class: "name" }, `${who.tenant} · ${who.key_name}`), ` (${who.role}) `, h("button", { type: "button", class: "link", id: "sign-out", onclick: signOut }, "Sign out")) : "",
  );
}

function signOut() {
  session.clear();
  location.hash = "#/signin";
}

function signIn() {
  const out = h("div");
  const input = h("input", { name: "key", id: "api-key", type: "password", autocomplete: "off", required: true, size: 50, placeholder: "llk_… or a bearer token" });
  const form = h(
    "form",
    { id: "signin-form", class: "signin" },
    h("h1", {}, "Sign in"),
    h("p", {}, "Paste an API key (or a bearer token from your identity provider). It is kept for this tab only and sent with each call to the API."),
    h("label", { for: "api-key" }, "Key"),
    input,
    h("button", { type: "submit" }, "Sign in"),
    out,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const key = input.value.trim();
      const who = await get("/v1/whoami", { key });
      session.set(key, who);
      location.hash = home(who);
    } catch (e) {
      out.replaceChildren(errorBox(e));
    }
  });
  setTimeout(() => input.focus(), 0);
  return form;
}

// Each render is numbered: a slow page that finishes after the user (or a link) moved on
// must not replace the newer page.
let renders = 0;

async function render() {
  const mine = ++renders;
  const main = document.getElementById("main");
  const [path, qs] = location.hash.replace(/^#/, "").split("?");
  const query = new URLSearchParams(qs || "");
  renderNav();
  if (!session.key || path === "/signin") {
    main.replaceChildren(signIn());
    return;
  }
  const who = session.who;
  const route = routes.find(([re]) => re.test(path));
  if (!route) {
    location.hash = home(who);
    return;
  }
  const [re, allowed, page] = route;
  if (!allowed(who)) {
    main.replaceChildren(h("div", { class: "error", role: "alert" }, `Your role (${who.role}) does not give access to this page.`));
    return;
  }
  const params = path.match(re).slice(1).map(decodeURIComponent);
  main.replaceChildren(h("p", { class: "loading" }, "Loading…"));
  try {
    const node = await page(...params, query);
    if (mine !== renders) return;
    main.replaceChildren(node);
  } catch (e) {
    if (mine !== renders) return;
    main.replaceChildren(errorBox(e));
    if (e.status === 401) {
      session.clear();
      renderNav();
    }
  }
  main.focus({ preventScroll: true });
}

window.addEventListener("hashchange", render);
render();
