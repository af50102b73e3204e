// Keeps a Tree current: lists the store, then long-polls the change journal for as long as the
// page is open, so a change made on any machine shows without a reload.

const WAIT_S = 30;

export class Follower {
  constructor(api, tree, onChange, onTrouble) {
    this.api = api;
    this.tree = tree;
    this.onChange = onChange; // (touched folders) after each page of changes
    this.onTrouble = onTrouble; // (error or null) when the connection fails or recovers
    this.abort = new AbortController();
  }

  /** The whole tree, page by page; resolves once it is listed. */
  async list() {
    let page;
    do {
      page = await this.api.changes(this.tree.cursor, 0, this.abort.signal);
      this.onChange(this.tree.apply(page));
    } while (page.more);
  }

  /** Long-poll until `stop`; failures back off up to 30 s and are retried. */
  async run() {
    let backoff = 1000;
    while (!this.abort.signal.aborted) {
      try {
        const page = await this.api.changes(this.tree.cursor, WAIT_S, this.abort.signal);
        this.onChange(this.tree.apply(page));
        this.onTrouble(null);
        backoff = 1000;
      } catch (err) {
        if (this.abort.signal.aborted) return;
        this.onTrouble(err);
        if (err.status === 401) return;
        await new Promise((resolve) => setTimeout(resolve, backoff));
        backoff = Math.min(backoff * 2, 30000);
      }
    }
  }

  stop() { this.abort.abort(); }
}
