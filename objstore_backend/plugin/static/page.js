// The plugin's pages: render with textContent only (keys and values are untrusted), call the
// plugin's routes with fetch(), and send writes as JSON with the header the routes require.
"use strict";
const CONFIG = JSON.parse(document.getElementById("config").textContent);
const PAGE_SIZE = 50;
const PREVIEW_CHARS = 2000;

// -- theme: follow Airflow's UI (the parent page's <html class="dark|light">), else the browser
function followTheme() {
  const apply = () => {
    let theme = null;
    try {
      const cls = window.parent.document.documentElement.classList;
      theme = cls.contains("dark") ? "dark" : cls.contains("light") ? "light" : null;
    } catch (e) { /* not framed by Airflow */ }
    if (!theme) {
      const stored = window.localStorage.getItem("theme");
      theme = stored === "dark" || stored === "light" ? stored : null;
    }
    if (theme) document.documentElement.dataset.theme = theme;
    else delete document.documentElement.dataset.theme;
  };
  apply();
  try {
    new MutationObserver(apply).observe(window.parent.document.documentElement, { attributes: true });
  } catch (e) { /* not framed */ }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "onclick") node.addEventListener("click", value);
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function call(method, url, body) {
  const options = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (method !== "GET") options.headers[CONFIG.csrf_header] = "1";
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const detail = data && data.detail !== undefined ? data.detail : text;
    throw new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return data;
}

function status(message, isError) {
  const node = document.getElementById("status");
  node.textContent = message || "";
  node.className = isError ? "status error" : "status";
}

function formatBytes(n) {
  if (n === null || n === undefined) return "?";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function expiryCell(entry) {
  if (entry.expired) {
    return el("span", { class: "badge expired", title: entry.expires_at }, "expired, awaiting GC");
  }
  if (!entry.expires_at) return el("span", { class: "muted" }, "never");
  return el("span", { title: entry.expires_at }, new Date(entry.expires_at).toLocaleString());
}

function valueCell(entry, itemUrl) {
  if (entry.value === null || entry.value === undefined) {
    return el("div", {}, el("div", { class: "problem" }, entry.problem || "no value"),
      entry.size_bytes ? el("a", { href: itemUrl, download: `${entry.key}.json` }, "download the whole value") : null);
  }
  const text = JSON.stringify(entry.value, null, 1);
  const shown = text.length > PREVIEW_CHARS ? `${text.slice(0, PREVIEW_CHARS)}\u2026` : text;
  return el("pre", { class: "value" }, shown);
}

// A table of one scope's keys: list, edit (PATCH), delete, clear, add (PUT), a page at a time.
class StateTable {
  constructor(root, collectionUrl, listKey, query, canExpire) {
    Object.assign(this, { root, collectionUrl, listKey, query, canExpire, offset: 0 });
  }
  itemUrl(key) {
    // dots encoded too: a browser resolves a "." or ".." segment away before sending it
    return `${this.collectionUrl}/${encodeURIComponent(key).replace(/\./g, "%2E")}${this.query}`;
  }
  listUrl() {
    const sep = this.query ? "&" : "?";
    return `${this.collectionUrl}${this.query}${sep}limit=${PAGE_SIZE}&offset=${this.offset}`;
  }
  async load() {
    status("Loading\u2026");
    try {
      const data = await call("GET", this.listUrl());
      this.render(data[this.listKey], data.total_entries);
      status("");
    } catch (error) {
      status(error.message, true);
    }
  }
  async act(what, method, url, body) {
    try {
      await call(method, url, body);
      await this.load();
      status(what);
    } catch (error) {
      status(error.message, true);
    }
  }
  render(entries, total) {
    const rows = entries.map((entry) => this.row(entry));
    const table = el("table", { id: "state-table" },
      el("thead", {}, el("tr", {}, ...["Key", "Value", "Size", "Expires", "Mode", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows));
    const first = total ? this.offset + 1 : 0;
    const last = Math.min(this.offset + PAGE_SIZE, total);
    const toolbar = el("div", { class: "toolbar" },
      el("span", { id: "total" }, `${total} key${total === 1 ? "" : "s"}`),
      el("span", { class: "muted" }, total > PAGE_SIZE ? `showing ${first}\u2013${last}` : ""),
      el("button", { disabled: this.offset === 0 ? "" : null, onclick: () => { this.offset -= PAGE_SIZE; this.load(); } }, "Previous"),
      el("button", { disabled: last >= total ? "" : null, onclick: () => { this.offset += PAGE_SIZE; this.load(); } }, "Next"),
      el("button", { onclick: () => this.load() }, "Refresh"),
      el("button", { onclick: () => this.showAdd() }, "Add key"),
      el("button", { class: "danger", disabled: total ? null : "", onclick: () => this.clear() }, "Clear all"));
    this.root.replaceChildren(toolbar, el("div", { id: "add" }), table);
  }
  row(entry) {
    const tr = el("tr", { "data-key": entry.key });
    const editable = entry.value !== null && entry.value !== undefined;
    const actions = el("td", {},
      el("button", { disabled: editable ? null : "", onclick: () => this.edit(tr, entry) }, "Edit"),
      el("button", { class: "danger", onclick: () => this.remove(entry.key) }, "Delete"));
    tr.append(el("td", { class: "key" }, entry.key), el("td", { class: "value" }, valueCell(entry, this.itemUrl(entry.key))),
      el("td", {}, formatBytes(entry.size_bytes)), el("td", {}, expiryCell(entry)),
      el("td", {}, el("span", { class: "badge" }, entry.mode)), actions);
    return tr;
  }
  edit(tr, entry) {
    const area = el("textarea", { "aria-label": `new value of ${entry.key}` });
    area.value = JSON.stringify(entry.value, null, 2);
    const save = el("button", { class: "primary", onclick: () => {
      let value;
      try { value = JSON.parse(area.value); } catch (error) { status(`not JSON: ${error.message}`, true); return; }
      this.act(`Saved ${entry.key}`, "PATCH", this.itemUrl(entry.key), { value });
    } }, "Save");
    const cancel = el("button", { onclick: () => this.load() }, "Cancel");
    tr.children[1].replaceChildren(area, save, cancel);
  }
  remove(key) {
    if (window.confirm(`Delete the key ${key}?`)) this.act(`Deleted ${key}`, "DELETE", this.itemUrl(key));
  }
  clear() {
    if (window.confirm("Delete every key shown here?")) this.act("Cleared", "DELETE", `${this.collectionUrl}${this.query}`);
  }
  showAdd() {
    const key = el("input", { placeholder: "key", "aria-label": "key" });
    const value = el("textarea", { placeholder: "JSON value, e.g. {\"watermark\": 100}", "aria-label": "value" });
    const expiry = el("select", { "aria-label": "expiry" },
      el("option", { value: "default" }, "default retention"), el("option", { value: "never" }, "never expires"));
    const save = el("button", { class: "primary", onclick: () => {
      let parsed;
      try { parsed = JSON.parse(value.value); } catch (error) { status(`not JSON: ${error.message}`, true); return; }
      const body = { value: parsed };
      if (this.canExpire) body.expires_at = expiry.value === "never" ? null : "default";
      this.act(`Saved ${key.value}`, "PUT", this.itemUrl(key.value), body);
    } }, "Save");
    document.getElementById("add").replaceChildren(el("form", { class: "add", onsubmit: "return false" },
      el("div", { class: "toolbar" }, key, this.canExpire ? expiry : null), value, save,
      el("button", { onclick: () => this.load() }, "Cancel")));
  }
}

function taskPage(root) {
  const c = CONFIG;
  const base = `${c.api}/dags/${encodeURIComponent(c.dag_id)}/dagRuns/${encodeURIComponent(c.run_id)}` +
    `/taskInstances/${encodeURIComponent(c.task_id)}/state-store`;
  const show = (instance) => {
    const query = instance
      ? `?region_id=${encodeURIComponent(instance.region_id)}&region_index=${instance.region_index}`
      : `?map_index=${c.map_index}`;
    new StateTable(table, base, "task_state_store", query, true).load();
  };
  const table = el("div", { id: "instance-keys" });
  if (c.instances.length <= 1) {
    root.replaceChildren(table);
    show(c.instances[0]);
    return;
  }
  // Airflow 3.4: a task in a loop has an instance per iteration (one region, an index each)
  const label = (i) => `iteration ${i.region_index} (region ${i.region_id})`;
  const picker = el("select", { id: "instance", "aria-label": "task instance" },
    ...c.instances.map((i, n) => el("option", { value: String(n) }, label(i))));
  const chosen = c.instances.findIndex((i) =>
    i.region_id === c.chosen.region_id && i.region_index === c.chosen.region_index);
  picker.value = String(Math.max(chosen, 0));
  picker.addEventListener("change", () => show(c.instances[Number(picker.value)]));
  root.replaceChildren(el("div", { class: "toolbar" }, picker), table);
  show(c.instances[Number(picker.value)]);
}

async function assetPage(root) {
  const list = el("div", { class: "assets", id: "assets" });
  const keys = el("div", { id: "asset-keys" }, el("p", { class: "muted" }, "Choose an asset."));
  root.replaceChildren(el("div", { class: "split" }, list, keys));
  let offset = 0;
  const show = (asset, link) => {
    for (const other of list.querySelectorAll("a")) other.classList.remove("selected");
    link.classList.add("selected");
    const url = `${CONFIG.api}/assets/${asset.id}/state-store`;
    new StateTable(keys, url, "asset_state_store", "", false).load();
  };
  const load = async () => {
    try {
      const data = await call("GET", `${CONFIG.airflow}/api/v2/assets?limit=${PAGE_SIZE}&offset=${offset}&order_by=name`);
      const links = data.assets.map((asset) => {
        const link = el("a", { href: "#", "data-asset-id": asset.id, title: asset.uri }, asset.name);
        link.addEventListener("click", (event) => { event.preventDefault(); show(asset, link); });
        return link;
      });
      const more = el("div", { class: "toolbar" },
        el("button", { disabled: offset === 0 ? "" : null, onclick: () => { offset -= PAGE_SIZE; load(); } }, "Previous"),
        el("button", { disabled: offset + PAGE_SIZE >= data.total_entries ? "" : null,
          onclick: () => { offset += PAGE_SIZE; load(); } }, "Next"));
      list.replaceChildren(el("div", { class: "muted" }, `${data.total_entries} assets`), ...links, more);
      if (CONFIG.asset_id !== null) {
        const chosen = data.assets.find((asset) => asset.id === CONFIG.asset_id);
        const link = list.querySelector(`a[data-asset-id="${CONFIG.asset_id}"]`);
        if (chosen && link) show(chosen, link);
      }
    } catch (error) {
      status(error.message, true);
    }
  };
  load();
}

function overviewPage(root) {
  let offset = 0;
  const render = (data) => {
    if (!data.taken_at) {
      root.replaceChildren(toolbar(), el("p", { class: "muted" },
        "No inventory taken yet in this API server process. Taking one lists every object under the base path."));
      return;
    }
    const inv = data.inventory;
    const facts = [
      ["Store", data.store], ["Taken", `${new Date(data.taken_at).toLocaleString()} in ${data.seconds} s`],
      ["Keys", `${inv.keys} (${formatBytes(inv.bytes)})`],
      ["Expired, awaiting GC", `${inv.expired_backlog.keys} keys, ${formatBytes(inv.expired_backlog.bytes)}` +
        (inv.expired_backlog.oldest_expiry ? `, oldest expiry ${inv.expired_backlog.oldest_expiry}` : "")],
      ["Never expire", inv.never_expire], ["Offload objects", inv.offload],
      ["By mode", Object.entries(inv.by_mode).map(([k, v]) => `${k}: ${v.keys} (${formatBytes(v.bytes)})`).join(", ")],
      ["By scope", Object.entries(inv.by_kind).map(([k, v]) => `${k}: ${v.keys} (${formatBytes(v.bytes)})`).join(", ")],
      ["Foreign / unreadable objects", `${inv.foreign_count} / ${inv.unreadable_count}`],
    ];
    const factTable = el("table", { id: "facts" }, el("tbody", {},
      ...facts.map(([name, value]) => el("tr", {}, el("th", {}, name), el("td", {}, value)))));
    const findings = el("ul", { id: "findings" }, ...data.findings.map((f) =>
      el("li", {}, el("span", { class: "badge" }, f.level), " ", el("code", {}, f.code), " ", f.message)));
    const dags = el("table", { id: "dags" },
      el("thead", {}, el("tr", {}, el("th", {}, "DAG"), el("th", {}, "Keys"), el("th", {}, "Bytes"))),
      el("tbody", {}, ...data.dags.map((d) => el("tr", {}, el("td", { class: "key" }, d.dag_id), el("td", {}, d.keys),
        el("td", {}, formatBytes(d.bytes))))));
    const pager = el("div", { class: "toolbar" }, el("span", {}, `${data.total_dags} DAGs`),
      el("button", { disabled: offset === 0 ? "" : null, onclick: () => { offset -= PAGE_SIZE; load(); } }, "Previous"),
      el("button", { disabled: offset + PAGE_SIZE >= data.total_dags ? "" : null,
        onclick: () => { offset += PAGE_SIZE; load(); } }, "Next"));
    root.replaceChildren(toolbar(), factTable, el("h2", {}, "Findings"), findings, el("h2", {}, "By DAG"), pager, dags);
  };
  const toolbar = () => el("div", { class: "toolbar" }, el("button", { class: "primary", id: "take", onclick: async () => {
    status("Taking the inventory\u2026");
    try { offset = 0; render(await call("POST", `${CONFIG.api}/overview/inventory?limit=${PAGE_SIZE}`)); status(""); }
    catch (error) { status(error.message, true); }
  } }, "Take inventory now"));
  const load = async () => {
    try { render(await call("GET", `${CONFIG.api}/overview?limit=${PAGE_SIZE}&offset=${offset}`)); }
    catch (error) { status(error.message, true); }
  };
  load();
}

followTheme();
const main = document.getElementById("main");
({ task: taskPage, asset: assetPage, overview: overviewPage })[CONFIG.page](main);
