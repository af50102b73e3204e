// Calls of the WebSync protocol (docs/protocol.md) from the page, on the browser session.

/** An answer other than 2xx: the server's error code and sentence. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `the server answered ${status}`);
    this.status = status;
    this.code = body.error || "";
    this.body = body;
  }
}

/** A fresh id for a node or a batch: 32 lower-case hex digits. */
export function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The session (user, store, device, csrf) and every call the page makes. */
export class Api {
  constructor(session) {
    this.session = session;
    this.current = session.store; // the store shown: the user's own, or a shared folder
  }

  static async login(user, password) {
    return new Api(await call("POST", "/web/login", { user, password }));
  }

  /** The session this browser has, or null when it must log in. */
  static async resume() {
    try {
      return new Api(await call("GET", "/web/session"));
    } catch (err) {
      if (err.status === 401) return null;
      throw err;
    }
  }

  get store() { return this.current; }

  /** The query that sends a block call through the shared folder shown, if one is. */
  get via() { return this.current === this.session.store ? "" : `?store=${this.current}`; }

  shares() { return this.send("GET", "/v1/shares"); }

  logout() { return this.send("POST", "/web/logout"); }

  changes(cursor, wait, signal) {
    return this.send("GET", `/v1/stores/${this.store}/changes?cursor=${cursor}&wait=${wait}`, undefined, signal);
  }

  commit(ops) { return this.send("POST", `/v1/stores/${this.store}/commit`, { batch: newId(), ops }); }

  versions(node) { return this.send("GET", `/v1/stores/${this.store}/nodes/${node}/versions`); }

  trash() { return this.send("GET", `/v1/stores/${this.store}/trash`); }

  devices() { return this.send("GET", "/v1/devices"); }

  usage() { return this.send("GET", "/v1/usage"); }

  revokeDevice(id) { return this.send("POST", `/v1/devices/${id}/revoke`, {}); }

  missing(hashes) { return this.send("POST", `/v1/blocks/missing${this.via}`, { hashes }); }

  putBlock(hash, bytes) { return this.send("PUT", `/v1/blocks/${hash}${this.via}`, bytes); }

  /** The address of a file's bytes: opened in the browser, or downloaded. */
  fileUrl(node, name, download) {
    const store = this.current === this.session.store ? "" : `&store=${this.current}`;
    return `/web/files/${node}?name=${encodeURIComponent(name)}${download ? "&download=1" : ""}${store}`;
  }

  send(method, path, body, signal) {
    return call(method, path, body, signal, this.session.csrf);
  }
}

async function call(method, path, body, signal, csrf) {
  const headers = {};
  if (csrf) headers["X-WebSync-CSRF"] = csrf;
  let payload = body;
  if (body !== undefined && !(body instanceof ArrayBuffer || ArrayBuffer.isView(body) || body instanceof Blob)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const answer = await fetch(path, { method, headers, body: payload, signal, credentials: "same-origin" });
  const data = await answer.json().catch(() => ({}));
  if (!answer.ok) throw new ApiError(answer.status, data);
  return data;
}
