// The store's tree as the change journal describes it: nodes, and entries by folder.

export const ROOT = "root";

export class Tree {
  constructor() {
    this.cursor = 0;
    this.nodes = new Map(); // id -> node
    this.children = new Map(); // folder id -> Map(name -> node id)
    this.placed = new Map(); // node id -> {parent, name}: where it is named
  }

  /** Apply one page of the journal; return the folders whose listing changed. */
  apply(page) {
    const touched = new Set();
    if (page.reset) this.clear();
    for (const node of page.nodes) {
      if (node.deleted) this.nodes.delete(node.id);
      else this.nodes.set(node.id, node);
      const at = this.placed.get(node.id);
      if (at) touched.add(at.parent);
    }
    for (const entry of page.entries) {
      const names = this.children.get(entry.parent) || new Map();
      const before = names.get(entry.name);
      if (before !== undefined && this.placed.get(before)?.name === entry.name) this.placed.delete(before);
      if (entry.node === null) names.delete(entry.name);
      else {
        names.set(entry.name, entry.node);
        this.placed.set(entry.node, { parent: entry.parent, name: entry.name });
      }
      this.children.set(entry.parent, names);
      touched.add(entry.parent);
    }
    this.cursor = page.cursor;
    return touched;
  }

  clear() {
    this.nodes.clear();
    this.children.clear();
    this.placed.clear();
  }

  /** The live items of a folder: [{name, node}]. */
  list(folder) {
    const items = [];
    for (const [name, id] of this.children.get(folder) || []) {
      const node = this.nodes.get(id);
      if (node) items.push({ name, node });
    }
    return items;
  }

  child(folder, name) {
    const id = this.children.get(folder)?.get(name);
    return id === undefined ? undefined : this.nodes.get(id);
  }

  isDir(id) { return id === ROOT || this.nodes.get(id)?.kind === "dir"; }

  /** The folders from the root down to *id*: [{id, name}]. */
  ancestry(id) {
    const chain = [];
    for (let at = id; at !== ROOT;) {
      const place = this.placed.get(at);
      if (!place) return null; // not (or no longer) in the tree
      chain.unshift({ id: at, name: place.name });
      at = place.parent;
    }
    chain.unshift({ id: ROOT, name: "" });
    return chain;
  }

  path(id) {
    const chain = this.ancestry(id);
    return chain ? "/" + chain.slice(1).map((c) => c.name).join("/") : null;
  }

  /** The folder at a path like "/a/b", or undefined. */
  folderAt(path) {
    let at = ROOT;
    for (const name of path.split("/").filter(Boolean)) {
      const node = this.child(at, name);
      if (!node || node.kind !== "dir") return undefined;
      at = node.id;
    }
    return at;
  }

  /** Every folder's path, for choosing where to move something. */
  folderPaths() {
    const paths = [];
    for (const node of this.nodes.values()) {
      if (node.kind === "dir") {
        const path = this.path(node.id);
        if (path) paths.push(path);
      }
    }
    return ["/", ...paths.sort()];
  }

  /** Files and folders in the tree, and the bytes the files hold. */
  usage() {
    let files = 0, bytes = 0;
    for (const node of this.nodes.values()) {
      if (node.kind === "file") { files += 1; bytes += node.size; }
    }
    return { files, bytes };
  }

  /** The delete ops that remove *id* and everything under it, deepest first. */
  deleteOps(id, parent, name) {
    const ops = [];
    if (this.nodes.get(id)?.kind === "dir") {
      for (const item of this.list(id)) ops.push(...this.deleteOps(item.node.id, id, item.name));
    }
    ops.push({ op: "delete", id, parent, name });
    return ops;
  }
}
