// Uploads from the page through the protocol any machine uses: 4 MiB blocks named by their
// SHA-256, only the ones the server lacks sent (PUT), then one commit of the new files.

import { newId } from "./api.js";
import { sha256 } from "./sha256.js";

export const BLOCK_SIZE = 4 * 1024 * 1024;
const GROUP = 8; // blocks hashed and asked about at a time: bounds memory to 32 MiB a file
const PARALLEL = 3; // block PUTs in flight
const COMMIT_EVERY = 200; // ops per commit when a folder of small files goes up

/**
 * Upload *items* ([{path: "a/b.txt", file: File}]) into folder *parent*.
 * Folders on the way are made (or reused); a file whose name exists becomes its new version.
 * *progress(done, total)* is called as bytes go up.
 */
export async function upload(api, tree, parent, items, progress) {
  const total = items.reduce((sum, item) => sum + item.file.size, 0);
  let done = 0;
  const made = new Map(); // "a/b" -> folder id made in this upload
  let ops = await folderOps(tree, parent, items, made);
  if (ops.length) { await api.commit(ops); ops = []; }
  for (const { path, file } of items) {
    const parts = path.split("/");
    const name = parts.pop();
    const folder = parts.length ? made.get(parts.join("/")) : parent;
    const blocks = await sendBlocks(api, file, (bytes) => progress((done += bytes), total));
    ops.push(fileOp(tree, folder, name, file, blocks));
    if (ops.length >= COMMIT_EVERY || file.size >= BLOCK_SIZE) { await api.commit(ops); ops = []; }
  }
  if (ops.length) await api.commit(ops);
  progress(total, total);
}

async function folderOps(tree, parent, items, made) {
  const ops = [];
  for (const { path } of items) {
    const parts = path.split("/").slice(0, -1);
    for (let depth = 1; depth <= parts.length; depth++) {
      const key = parts.slice(0, depth).join("/");
      if (made.has(key)) continue;
      const above = depth === 1 ? parent : made.get(parts.slice(0, depth - 1).join("/"));
      const name = parts[depth - 1];
      const existing = tree.child(above, name);
      if (existing && existing.kind !== "dir") throw new Error(`"${name}" exists and is not a folder`);
      const id = existing ? existing.id : newId();
      if (!existing) ops.push({ op: "mkdir", id, parent: above, name, mode: 0o755, mtime_ns: Date.now() * 1e6 });
      made.set(key, id);
    }
  }
  return ops;
}

function fileOp(tree, folder, name, file, blocks) {
  const mtime_ns = file.lastModified * 1e6;
  const existing = folder && tree.child(folder, name);
  if (existing && existing.kind === "file") {
    // A new version of the file that is there: its history stays.
    return { op: "update", id: existing.id, base: existing.seq, size: file.size, blocks, mtime_ns };
  }
  if (existing) throw new Error(`"${name}" exists and is not a file`);
  return { op: "create", id: newId(), parent: folder, name, mode: 0o644, mtime_ns, size: file.size, blocks };
}

/** Hash *file* block by block and PUT the blocks the server lacks; return the block list. */
async function sendBlocks(api, file, sent) {
  const hashes = [];
  for (let first = 0; first === 0 || first < file.size; first += GROUP * BLOCK_SIZE) {
    const group = [];
    for (let at = first; at < Math.min(file.size, first + GROUP * BLOCK_SIZE); at += BLOCK_SIZE) {
      const bytes = await file.slice(at, at + BLOCK_SIZE).arrayBuffer();
      group.push({ bytes, hash: await sha256(bytes) });
    }
    if (!group.length) break; // an empty file has no blocks
    const { missing } = await api.missing(group.map((b) => b.hash));
    const lacking = new Set(missing);
    const queue = group.filter((b) => lacking.has(b.hash));
    const worker = async () => {
      // As a Blob: Chromium sends a Blob body ~30x faster than the same bytes as an ArrayBuffer
      // (4 MiB: ~10 ms against 200-500 ms, docs/benchmarks.md). The Blob holds the hashed bytes,
      // not a slice of the file, so a file changed meanwhile can't send bytes of another hash.
      for (let block; (block = queue.shift());) await api.putBlock(block.hash, new Blob([block.bytes]));
    };
    await Promise.all(Array.from({ length: PARALLEL }, worker));
    for (const block of group) { hashes.push(block.hash); sent(block.bytes.byteLength); }
  }
  return hashes;
}
