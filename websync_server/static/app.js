// The page: log in, browse the tree, and act on it through the protocol.

import { Api, newId } from "./api.js";
import { Follower } from "./follower.js";
import { ROOT, Tree } from "./tree.js";
import { upload } from "./upload.js";

const $ = (selector) => document.querySelector(selector);
const state = { api: null, tree: null, follower: null, folder: ROOT, sort: "name", descending: false, menuFor: null };

// ---- formatting ---------------------------------------------------------------------------

function size(bytes) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let at = 0;
  for (; bytes >= 1000 && at < units.length - 1; at++) bytes /= 1000;
  return `${at ? bytes.toFixed(1) : bytes} ${units[at]}`;
}

function date(ns) {
  return new Date(ns / 1e6).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function say(message, bad = false) {
  $("#status").textContent = message;
  $("#status").classList.toggle("bad", bad);
}

// ---- login --------------------------------------------------------------------------------

async function start() {
  const api = await Api.resume().catch(() => null);
  if (api) enter(api);
  else showLogin();
}

function showLogin(message = "") {
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message;
  $("#login-form").password.focus();
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  try {
    enter(await Api.login(form.user.value, form.password.value));
    form.password.value = "";
  } catch (err) {
    $("#login-error").textContent = err.status === 401 ? "Wrong user name or password." : err.message;
  }
});

$("#logout").addEventListener("click", logOut);

/** End this browser's session: its device is revoked and its cookie dropped. */
async function logOut() {
  state.follower?.stop();
  await state.api.logout().catch(() => {});
  showLogin("You are logged out.");
}

async function enter(api) {
  state.api = api;
  state.tree = new Tree();
  state.stored = null;
  usageAsked = 0;
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#who").textContent = `${api.session.user} · ${api.session.device}`;
  await follow();
  refreshUsage();
  listShares().catch((err) => say(err.message, true));
}

/** List the store shown (the user's own or a shared folder) and follow its changes. */
async function follow() {
  say("Listing…");
  state.follower = new Follower(state.api, state.tree, changed, trouble);
  await state.follower.list();
  say("");
  route();
  state.follower.run();
}

/** Offer the shared folders the user owns or is a member of beside their own files. */
async function listShares() {
  const { shares } = await state.api.shares();
  const user = state.api.session.user;
  const options = shares.map((s) => el("option", {
    value: s.store,
    textContent: `${s.name}${s.owner === user ? "" : ` (${s.owner})`}${s.read_only ? " · read-only" : ""}`,
  }));
  $("#place").replaceChildren(el("option", { value: state.api.session.store, textContent: "My files" }), ...options);
  $("#place").value = state.api.current;
  $("#place").hidden = shares.length === 0;
}

$("#place").addEventListener("change", (event) => show(event.target.value).catch((err) => say(err.message, true)));

async function show(store) {
  state.follower?.stop();
  state.api.current = store;
  state.tree = new Tree();
  state.folder = ROOT;
  if (location.hash !== "#/") history.replaceState(null, "", "#/");
  await follow();
}

function changed(touched) {
  if (touched.has(state.folder) || !state.tree.ancestry(state.folder)) scheduleRender();
  $("#usage").textContent = usageText();
  refreshUsage();
}

function trouble(err) {
  if (err?.status === 401) showLogin("Your session has ended; log in again.");
  else say(err ? `Offline: ${err.message}. Retrying…` : "", Boolean(err));
}

function usageText() {
  const { files, bytes } = state.tree.usage();
  const stored = state.stored;
  if (!stored) return `${files} files · ${size(bytes)}`;
  // What counts against the quota: every block once, the trash and old versions too.
  const room = stored.quota_bytes == null ? "" : ` of ${size(stored.quota_bytes)}`;
  return `${files} files · ${size(bytes)} · ${size(stored.stored_bytes)}${room} stored`;
}

let usageAsked = 0;

async function refreshUsage() {
  // At most every 10 s: the server sums a user's blocks, cached, but not free.
  if (Date.now() - usageAsked < 10_000) return;
  usageAsked = Date.now();
  try {
    state.stored = await state.api.usage();
    $("#usage").textContent = usageText();
  } catch (err) {
    if (err?.status === 401) trouble(err);
  }
}

// ---- views --------------------------------------------------------------------------------

window.addEventListener("hashchange", route);

function route() {
  if (!state.tree) return;
  const hash = decodeURIComponent(location.hash.slice(1)) || "/";
  const views = ["files", "trash", "conflicts", "devices"];
  const view = views.includes(hash) ? hash : "files";
  for (const name of views) $(`#${name}-view`).hidden = name !== view;
  for (const link of document.querySelectorAll("#views a")) {
    link.toggleAttribute("aria-current", link.getAttribute("href") === (view === "files" ? "#/" : `#${view}`));
  }
  if (view === "trash") return showTrash();
  if (view === "conflicts") return showConflicts();
  if (view === "devices") return showDevices().catch(devicesFailed);
  state.folder = state.tree.folderAt(hash) || ROOT;
  render();
}

let pending = 0;
function scheduleRender() {
  if (!pending) pending = requestAnimationFrame(() => { pending = 0; render(); });
}

function render() {
  const tree = state.tree;
  if (!tree.ancestry(state.folder)) state.folder = ROOT; // it was moved away or deleted
  const chain = tree.ancestry(state.folder);
  $("#crumbs").replaceChildren(...chain.map((c) => el("a", { href: folderHref(c.id), textContent: c.name || "Home" })));
  const items = sorted(tree.list(state.folder));
  const rows = items.map(({ name, node }) => row(name, node));
  $("#listing tbody").replaceChildren(...rows);
  $("#empty").hidden = rows.length > 0;
  for (const button of document.querySelectorAll("th button")) {
    const on = button.dataset.sort === state.sort;
    button.setAttribute("aria-sort", on ? (state.descending ? "descending" : "ascending") : "none");
  }
  document.title = `${chain.length > 1 ? chain[chain.length - 1].name : "Home"} · WebSync`;
}

function folderHref(id) {
  return "#" + encodeURI(state.tree.path(id) || "/");
}

const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
function sorted(items) {
  const key = {
    name: (a, b) => collator.compare(a.name, b.name),
    size: (a, b) => a.node.size - b.node.size,
    mtime: (a, b) => a.node.mtime_ns - b.node.mtime_ns,
    device: (a, b) => collator.compare(a.node.device, b.node.device),
  }[state.sort];
  const sign = state.descending ? -1 : 1;
  // Folders first, whatever the order.
  return items.sort((a, b) => (b.node.kind === "dir") - (a.node.kind === "dir") || sign * key(a, b) || collator.compare(a.name, b.name));
}

function row(name, node) {
  const dir = node.kind === "dir";
  const link = dir
    ? el("a", { href: folderHref(node.id), textContent: name })
    : el("a", { href: state.api.fileUrl(node.id, name, false), textContent: name, target: "_blank", rel: "noopener" });
  link.className = "item";
  const menu = el("button", { type: "button", textContent: "⋯", title: `Actions for ${name}` });
  menu.setAttribute("aria-haspopup", "menu");
  menu.setAttribute("aria-label", `Actions for ${name}`);
  menu.addEventListener("click", (event) => openMenu(event.currentTarget, name, node));
  const tr = el("tr", {},
    el("td", { className: "name" }, el("span", { className: dir ? "kind dir" : "kind" }), link),
    el("td", { className: "size", textContent: dir ? "" : size(node.size) }),
    el("td", { className: "date", textContent: date(node.mtime_ns) }),
    el("td", { className: "device", textContent: node.device }),
    el("td", {}, menu));
  tr.dataset.name = name;
  return tr;
}

for (const button of document.querySelectorAll("th button")) {
  button.addEventListener("click", () => {
    state.descending = state.sort === button.dataset.sort ? !state.descending : false;
    state.sort = button.dataset.sort;
    render();
  });
}

// Keyboard: arrows move between items, Backspace goes up, Delete deletes, F2 renames.
document.addEventListener("keydown", (event) => {
  if (event.target.closest("dialog, form, .menu") || $("#files-view").hidden) return;
  const links = [...document.querySelectorAll("#listing a.item")];
  const at = links.indexOf(document.activeElement);
  const item = at >= 0 ? itemOf(links[at]) : null;
  if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    const next = links[Math.max(0, Math.min(links.length - 1, at + (event.key === "ArrowDown" ? 1 : -1)))];
    next?.focus();
    event.preventDefault();
  } else if (event.key === "Backspace" && state.folder !== ROOT) {
    location.hash = folderHref(state.tree.placed.get(state.folder).parent);
  } else if (event.key === "Delete" && item) {
    act("delete", item.name, item.node);
  } else if (event.key === "F2" && item) {
    act("rename", item.name, item.node);
    event.preventDefault();
  }
});

function itemOf(link) {
  const name = link.closest("tr").dataset.name;
  return { name, node: state.tree.child(state.folder, name) };
}

// ---- actions ------------------------------------------------------------------------------

function openMenu(button, name, node) {
  const menu = $("#menu");
  state.menuFor = { name, node };
  for (const item of menu.querySelectorAll("button")) {
    item.hidden = node.kind === "dir" && ["download", "versions"].includes(item.dataset.act);
  }
  const box = button.getBoundingClientRect();
  menu.hidden = false;
  menu.style.top = `${window.scrollY + box.bottom}px`;
  menu.style.left = `${Math.max(0, window.scrollX + box.right - menu.offsetWidth)}px`;
  menu.querySelector("button:not([hidden])").focus();
}

function closeMenu() {
  $("#menu").hidden = true;
}

$("#menu").addEventListener("click", (event) => {
  const act_ = event.target.dataset.act;
  if (!act_) return;
  closeMenu();
  act(act_, state.menuFor.name, state.menuFor.node);
});
$("#menu").addEventListener("keydown", (event) => {
  const items = [...$("#menu").querySelectorAll("button:not([hidden])")];
  const at = items.indexOf(document.activeElement);
  if (event.key === "Escape") closeMenu();
  else if (event.key === "ArrowDown") items[(at + 1) % items.length].focus();
  else if (event.key === "ArrowUp") items[(at - 1 + items.length) % items.length].focus();
  else return;
  event.preventDefault();
});
document.addEventListener("click", (event) => {
  if (!event.target.closest("#menu, [aria-haspopup]")) closeMenu();
});

async function act(action, name, node) {
  const folder = state.folder;
  try {
    if (action === "open" && node.kind === "dir") location.hash = folderHref(node.id);
    else if (action === "open") window.open(state.api.fileUrl(node.id, name, false), "_blank", "noopener");
    else if (action === "download") download(node, name);
    else if (action === "rename") await rename(folder, name, node);
    else if (action === "move") await move(folder, name, node);
    else if (action === "delete") await remove(folder, name, node);
    else if (action === "versions") await showVersions(name, node);
  } catch (err) {
    say(err.message, true);
  }
}

function download(node, name) {
  const link = el("a", { href: state.api.fileUrl(node.id, name, true), download: name });
  document.body.append(link);
  link.click();
  link.remove();
}

async function rename(folder, name, node) {
  await ask("Rename", "New name", name, [], async (newName) => {
    if (newName !== name) {
      await state.api.commit([{ op: "rename", id: node.id, parent: folder, name, new_parent: folder, new_name: newName }]);
    }
  });
}

async function move(folder, name, node) {
  await ask(`Move ${name}`, "To folder", state.tree.path(folder), state.tree.folderPaths(), async (path) => {
    const target = state.tree.folderAt(path);
    if (target === undefined) throw new Error(`there is no folder ${path}`);
    await state.api.commit([{ op: "rename", id: node.id, parent: folder, name, new_parent: target, new_name: name }]);
  });
}

async function remove(folder, name, node) {
  const what = node.kind === "dir" ? `the folder "${name}" and everything in it` : `"${name}"`;
  if (!confirm(`Move ${what} to the trash?`)) return;
  await state.api.commit(state.tree.deleteOps(node.id, folder, name));
  say(`Deleted ${name}. It is in the trash.`);
}

$("#new-folder").addEventListener("click", () =>
  ask("New folder", "Name", "", [], (name) =>
    state.api.commit([{ op: "mkdir", id: newId(), parent: state.folder, name, mode: 0o755, mtime_ns: Date.now() * 1e6 }]),
  ).catch((err) => say(err.message, true)));

/** A dialog asking for one value; *done(value)* runs on OK and may throw to keep it open. */
function ask(title, label, value, choices, done) {
  const dialog = $("#ask");
  $("#ask-title").textContent = title;
  $("#ask-label").textContent = label;
  $("#ask-error").textContent = "";
  $("#ask-list").replaceChildren(...choices.map((c) => el("option", { value: c })));
  const input = $("#ask-input");
  input.value = value;
  return new Promise((resolve) => {
    const submit = async (event) => {
      if (event.submitter?.value !== "ok") return;
      event.preventDefault();
      try {
        await done(input.value);
        dialog.close();
      } catch (err) {
        $("#ask-error").textContent = err.message;
      }
    };
    dialog.querySelector("form").onsubmit = submit;
    dialog.onclose = () => resolve();
    dialog.showModal();
    input.select();
  });
}

// ---- upload -------------------------------------------------------------------------------

$("#pick-files").addEventListener("change", (event) => {
  send([...event.target.files].map((file) => ({ path: file.name, file })));
  event.target.value = "";
});
$("#pick-folder").addEventListener("change", (event) => {
  send([...event.target.files].map((file) => ({ path: file.webkitRelativePath || file.name, file })));
  event.target.value = "";
});

const drop = $("#drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const entries = [...event.dataTransfer.items].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
  const items = [];
  for (const entry of entries) await collect(entry, "", items);
  send(items);
});

/** Files under a dropped entry (a folder is read all the way down). */
async function collect(entry, prefix, items) {
  if (entry.isFile) {
    items.push({ path: prefix + entry.name, file: await new Promise((ok, fail) => entry.file(ok, fail)) });
    return;
  }
  const reader = entry.createReader();
  for (;;) {
    const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
    if (!batch.length) return;
    for (const child of batch) await collect(child, `${prefix}${entry.name}/`, items);
  }
}

async function send(items) {
  if (!items.length) return;
  const bar = $("#progress-bar");
  $("#progress").hidden = false;
  const label = items.length === 1 ? items[0].path : `${items.length} files`;
  try {
    await upload(state.api, state.tree, state.folder, items, (done, total) => {
      bar.value = total ? done / total : 1;
      $("#progress-text").textContent = `Uploading ${label}: ${size(done)} of ${size(total)}`;
    });
    say(`Uploaded ${label}.`);
  } catch (err) {
    say(`Upload of ${label} failed: ${err.message}`, true);
  } finally {
    $("#progress").hidden = true;
  }
}

// ---- versions, trash, conflicts ------------------------------------------------------------

async function showVersions(name, node) {
  const { versions } = await state.api.versions(node.id);
  $("#versions-name").textContent = name;
  const rows = versions.slice().reverse().map((v) => {
    const cell = el("td");
    if (v.current) cell.textContent = "current";
    else {
      const button = el("button", { type: "button", textContent: "Restore" });
      button.addEventListener("click", async () => {
        const now = state.tree.nodes.get(node.id) || node;
        try {
          await state.api.commit([{ op: "update", id: node.id, base: now.seq, size: v.size, blocks: v.blocks, mtime_ns: v.mtime_ns }]);
          $("#versions").close();
          say(`Version ${v.version} of ${name} is the current one again.`);
        } catch (err) {
          say(err.message, true);
        }
      });
      cell.append(button);
    }
    return el("tr", {}, el("td", { textContent: v.version }), el("td", { className: "size", textContent: size(v.size) }),
      el("td", { textContent: new Date(v.time * 1000).toLocaleString() }), el("td", { className: "device", textContent: v.device }), cell);
  });
  $("#versions tbody").replaceChildren(...rows);
  $("#versions").showModal();
}

async function showTrash() {
  const { items } = await state.api.trash();
  const rows = items.map((item) => {
    const button = el("button", { type: "button", textContent: "Restore" });
    button.addEventListener("click", () => restore(item).catch((err) => say(err.message, true)));
    return el("tr", {}, el("td", { className: "name", textContent: item.path }),
      el("td", { className: "size", textContent: item.kind === "dir" ? "" : size(item.size) }),
      el("td", { className: "date", textContent: new Date(item.time * 1000).toLocaleString() }),
      el("td", { className: "device", textContent: item.device }), el("td", {}, button));
  });
  $("#trash tbody").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { textContent: "The trash is empty." }))]));
}

/** Bring a deleted item back where it was; to the top folder if that folder is gone too. */
async function restore(item) {
  const parent = state.tree.isDir(item.parent) && state.tree.ancestry(item.parent) ? item.parent : ROOT;
  let name = item.name;
  for (let n = 2; state.tree.child(parent, name); n++) name = `${item.name} (restored ${n})`;
  await state.api.commit([{ op: "restore", id: item.node, parent, name }]);
  say(`Restored ${state.tree.path(parent) === "/" ? "/" : state.tree.path(parent) + "/"}${name}.`);
  showTrash();
}

function showConflicts() {
  const found = [];
  for (const [id, place] of state.tree.placed) {
    if (place.name.includes(" (conflict from ") && state.tree.nodes.has(id)) found.push({ id, place });
  }
  $("#conflicts").replaceChildren(...(found.length ? found.map(({ id, place }) =>
    el("li", {}, el("a", { href: folderHref(place.parent), textContent: state.tree.path(id) })))
    : [el("li", { textContent: "No conflict copies." })]));
}

// ---- devices ------------------------------------------------------------------------------

async function showDevices() {
  const { devices } = await state.api.devices();
  const rows = devices.map((device) => {
    const name = el("td", { className: "name", textContent: device.name });
    if (device.current) name.append(" ", el("strong", { className: "this", textContent: "this browser" }));
    const button = el("button", { type: "button", textContent: "Log out this device" });
    button.setAttribute("aria-label", `Log out this device: ${device.name}`); // the visible words, then which one
    // A device logged out meanwhile (404) leaves the list when it is listed again.
    button.addEventListener("click", () => revoke(device).catch((err) => {
      devicesFailed(err);
      showDevices().catch(() => {});
    }));
    const tr = el("tr", {}, name, el("td", { className: "date", textContent: date(device.created_ns) }),
      el("td", { className: "seen", textContent: device.current ? "now" : seen(device.last_seen_ns) }),
      el("td", { className: "act" }, button));
    tr.dataset.name = device.name;
    if (device.current) tr.setAttribute("aria-current", "true");
    return tr;
  });
  $("#devices tbody").replaceChildren(...rows);
}

function devicesFailed(err) {
  if (err.status === 401) trouble(err);
  else say(err.message, true);
}

// The server renews a device's last-seen time only once it is 10 minutes old (accounts.LAST_SEEN_STEP_S).
function seen(ns) {
  return Date.now() - ns / 1e6 < 10 * 60 * 1000 ? "in the last 10 minutes" : date(ns);
}

async function revoke(device) {
  const question = device.current
    ? "Log out this browser? You will need your password to log in again."
    : `Log out "${device.name}"? It stops syncing until it logs in again with your password.`;
  if (!confirm(question)) return;
  if (device.current) return logOut(); // the session's own way: the cookie goes too
  await state.api.revokeDevice(device.id);
  say(`Logged out ${device.name}.`);
  await showDevices();
}

start();
