"""Three trees into one: the folder on disk, the replica, and the last synced state.

For each path looked at, the folder's file (L), the replica's node (R) and the
last synced row (K) decide what to do, so the direction of every change can be
derived, also after a crash or a start with changes on both sides:

=========================  =============================================
L same as K, R same as K   nothing
L changed, R same          local change: sent through the core (create,
                           write, mkdir, symlink, chmod, rename, delete;
                           chown where root, see `_owner_changed`)
L same, R changed          remote change: applied to the folder
both changed               equal content: only K is updated; else the
                           local file is kept under a conflict name and
                           the remote version takes the path; a delete
                           against an edit keeps the edit
=========================  =============================================

Moves are found by identity, not by events: a new local path whose inode K
knew under another path that is gone is one rename in the core (a folder of
thousands of files is one move on the server); a new remote path whose node K
knew elsewhere, still unchanged here, is one local rename.

Paths here are local paths.  Where the folder's file system refuses or folds
names (`websync_fs.namepolicy`), the replica's tree is listed under aliases
and `CorePaths` asks the core by the original; where it folds, one file
answers to several spellings and only the one the tree gives it is its path.

Downloads go into a hidden ``.websync-tmp-*`` file beside the target and are
renamed into place only if the local path still is what K says (checked with
no ``await`` between the check and the rename); otherwise the local file is
kept under the conflict name first.  Uploads read a file once its writer
closed it or after a quiet moment (`busy`: written to less than the watcher's
quiet period ago and not closed since), and are checked against the file again
after the read: a file that changed while read is looked at again later.  A
change found whole (the file unchanged after its read, a folder, a symlink) is
ready for the server at once (`hurry`): the folder waited for its writer
already, a second quiet period in the queue would only delay it.  A file that
changed while read keeps the queue's quiet period, so its next version can
still replace the one read.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from .. import portable
from ..conflicts import conflict_name
from ..namepolicy import LINUX, Aliases, Rules, canonical, fold
from ..replica import NodeRow, Replica
from .corepaths import ChangedMeanwhile, CorePaths, join
from .ignore import IgnoreRules
from .known import Known, KnownTree, LocalSig, content_of
from .tree import block_hashes, clear_leftovers, local_paths, local_sig, remote_tree, sig_of, version

log = logging.getLogger(__name__)

TMP_PREFIX = ".websync-tmp-"
#: The third name of a case-only rename (`Merger._respell_here`); never cleared as a leftover.
CASE_PREFIX = ".websync-case-"
#: The last synced state's meta key of a case-only rename under way: ``[old path, third name]``.
RESPELLING = "respelling"
#: Files up to this size are hashed on the loop (well under a millisecond).
INLINE_HASH = 64 * 1024
#: How far downloads read ahead: files, and blocks at most (64 MiB of 4 MiB blocks).
READ_AHEAD_FILES = 32
READ_AHEAD_BLOCKS = 16


async def _hashed(path: Path, size: int = -1) -> tuple[LocalSig, list[str], LocalSig]:
    """`block_hashes` of *path*: a small file on the loop, where the hop to a thread costs more than the read."""
    if 0 <= size <= INLINE_HASH:
        return block_hashes(path)
    return await trio.to_thread.run_sync(block_hashes, path)


#: Times closer than this are the same time: FAT keeps 2 s, HFS+ 1 s, NTFS 100 ns, so the time a
#: download set reads back rounded there, and would differ from the node's at every look.
_TIME_SLACK_NS = 2_000_000_000


#: A symlink's own time can be set here (not on Windows: there a link's time is left as it comes).
_LINK_TIMES = os.utime in os.supports_follow_symlinks


def _time_differs(local: LocalSig, row: NodeRow) -> bool:
    """A file or symlink whose time here is not the node's: set elsewhere (``touch``) since it was synced."""
    timed = local.kind == "file" or local.kind == "symlink" and _LINK_TIMES
    return local.kind == row.kind and timed and abs(local.mtime_ns - row.mtime_ns) >= _TIME_SLACK_NS


def _depth(path: str) -> tuple[int, str]:
    return path.count("/"), path


class Merger:
    """Settles batches of paths between the folder and the core."""

    def __init__(
        self, root: Path, core: CorePaths, replica: Replica, known: KnownTree, rules: IgnoreRules, device: str,
        *, check_folder: Callable[[], None] = lambda: None,
        prefetch: Callable[[list[str]], None] = lambda hashes: None, names: Rules = LINUX,
        busy: Callable[[str], bool] = lambda path: False, hurry: Callable[[str], None] = lambda node: None,
    ) -> None:
        self.root = root
        self.core = core
        #: What the folder's file system refuses and folds: paths here are local paths (aliases
        #: where the rules need them); the core is asked by the original, through `aliases`.
        self.names = names
        self.aliases = Aliases(names)
        core.to_core = lambda path: self.aliases.remote(path)
        self.replica = replica
        self.known = known
        self.rules = rules
        self.device = device
        #: Raises if the folder is gone: called before anything is deleted anywhere.
        self.check_folder = check_folder
        #: Starts loading blocks in the background (the engine's block source).
        self.prefetch = prefetch
        #: True while a writer may still be writing the file at a path (the watcher's view).
        self.busy = busy
        #: Lets a node's queued changes go without the queue's quiet period.
        self.hurry = hurry
        #: Paths to look at again in the next batch (a file changing while read, a retry).
        self.again: set[str] = set()
        #: Paths that failed, with why: shown in the status, retried.
        self.problems: dict[str, str] = {}
        self.conflicts = 0

    # -- a batch ---------------------------------------------------------------
    async def settle(self, dirty: set[str], everything: bool = False, remote: bool = False,
                     respelled: list[tuple[str, str]] | None = None) -> None:
        """Look at *dirty* paths (and their subtrees), all paths, or what the replica changed.

        *respelled*: renames here that changed only case, which a folding system shows as no change.
        """
        self.rules.reload()
        self.check_folder()
        for _src, dst in respelled or []:
            # Before the tree is listed, so that the batch sees the new spelling as the file's path.
            await self._guarded(dst, self._respell, dst)
        if everything:
            # Downloads a kill -9 cut short never reached their path: only their temporary goes.
            await trio.to_thread.run_sync(clear_leftovers, self.root, TMP_PREFIX, self.rules.elsewhere)
        dirty = dirty | self.again | set(self.problems)
        tree: dict[str, NodeRow] = {}
        if everything or remote or dirty:
            self.aliases = Aliases(self.names)
            tree = remote_tree(self.replica, self.rules, self.aliases, self._shown)
        # The whole last synced state in one query where the whole tree is compared with it.
        snapshot = self.known.all() if (everything or remote) else None
        candidates = self._candidates(tree, dirty, everything, snapshot)
        if snapshot is not None and everything:
            # Most of a start-up scan is unchanged: told apart from snapshots, not a core lookup a path.
            candidates = self._changed(candidates, tree, snapshot)
        order = sorted(candidates, key=_depth)
        self.again = set()
        # Downloads one after another wait a round trip each: the next files' blocks load meanwhile.
        ahead = self._downloads(tree, order, snapshot)
        removals: list[tuple[str, str]] = []
        for i, path in enumerate(order):
            self.prefetch([h for blocks in ahead[i:i + READ_AHEAD_FILES] for h in blocks][:READ_AHEAD_BLOCKS])
            await self._guarded(path, self._settle_one, path, removals)
        if removals:
            self.check_folder()
        for path, side in sorted(removals, key=lambda r: _depth(r[0]), reverse=True):
            await self._guarded(path, self._remove, path, side)

    def _shown(self, node: str) -> str | None:
        """The name a node had here when last synced (asked for the few whose names fold together)."""
        rows = self.known.by_node(node)
        return rows[0].path.rpartition("/")[2] if rows else None

    def _local(self, path: str) -> LocalSig | None:
        """What *path* holds on disk, where a folding system may find it under another spelling.

        Such a system finds ``Readme.md`` when asked for ``README.md``: the
        file belongs to the spelling the last synced state has it under, else
        to the spelling the tree gives it (`Aliases.same`).
        """
        sig = local_sig(self.root, path)
        if sig is None or not self.aliases.folds:
            return sig
        key = fold(path, self.names)
        holders = [k.path for k in self.known.by_ino(sig.ino) if fold(k.path, self.names) == key]
        if holders:
            return sig if path in holders else None
        return sig if self.aliases.same(path) == path else None

    async def _row(self, path: str) -> NodeRow | None:
        """The replica's node at *path*; none at a spelling the tree does not use (a folding system's stale one)."""
        if self.aliases.folds and self.aliases.same(path) != path:
            return None
        return await self.core.row(path)

    def _occupied(self, path: str) -> bool:
        """True if a folding system holds another spelling's file at *path* (not to be written over)."""
        return self.aliases.folds and self._local(path) is None and os.path.lexists(join(self.root, path))

    def _spelled(self, paths: set[str], tree: dict[str, NodeRow], known: set[str] | None = None) -> set[str]:
        """*paths* with the local spellings of one file made one (a folding system lists and reports any case).

        Spellings the tree or the last synced state hold stay as they are (a
        stale one is settled to drop its row); any other is a listing's or an
        event's spelling of one of them, or of a new file.
        """
        if not self.aliases.folds:
            return paths
        held = {p for p in paths if p in tree or (p in known if known is not None else self.known.get(p) is not None)}
        owners = {fold(p, self.names): p for p in sorted(held, key=lambda p: p in tree)}
        out = set(held)
        for path in sorted(paths - held):
            spelled = self.aliases.same(path)
            if owners.setdefault(fold(spelled, self.names), spelled) == spelled:
                out.add(spelled)
        return out

    async def _guarded(self, path: str, fn: Callable[..., object], *args: object) -> None:
        try:
            await fn(*args)  # type: ignore[misc]
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                reason = "disk full: downloads wait for room"
            else:
                reason = exc.strerror or str(exc)
            if self.problems.get(path) != reason:
                log.warning("%s: %s (retried)", path, reason)
            self.problems[path] = reason
        else:
            self.problems.pop(path, None)

    def _downloads(self, tree: dict[str, NodeRow], order: list[str],
                   snapshot: dict[str, Known] | None) -> list[list[str]]:
        """Per path of *order*, the blocks it will download (empty if none): what read-ahead fetches."""
        wanted: list[list[str]] = []
        for path in order:
            row = tree.get(path)
            known = None
            if row is not None and row.kind == "file":
                known = snapshot.get(path) if snapshot is not None else self.known.get(path)
            fresh = row is not None and row.kind == "file" and (known is None or known.version != version(row))
            wanted.append(list(row.blocks) if fresh and row is not None else [])
        return wanted

    def _changed(self, candidates: set[str], tree: dict[str, NodeRow], known: dict[str, Known]) -> set[str]:
        """The candidates whose file, node or last synced row differ (by this moment's snapshots)."""
        changed = set()
        for path in candidates:
            try:
                local = self._local(path)
            except OSError:
                changed.add(path)  # ENAMETOOLONG past PATH_MAX, EACCES: settled (and named) one by one
                continue
            k, row = known.get(path), tree.get(path)
            if k is None:
                same = local is None and row is None
            else:
                same = (local is not None and local.same(k.sig) and row is not None and row.id == k.node
                        and version(row) == k.version and not self._owner_changed(local, row)
                        and not _time_differs(k.sig, row))
            if not same:
                changed.add(path)
        return changed

    def _candidates(self, tree: dict[str, NodeRow], dirty: set[str], everything: bool,
                    snapshot: dict[str, Known] | None) -> set[str]:
        """Paths to look at: all, what the replica changed (with a *snapshot*), and the dirty subtrees."""
        if everything:
            known = set(self.known.paths())
            return self._spelled(set(local_paths(self.root, self.rules)) | known | set(tree), tree, known)
        dirty = {self.aliases.same(p) for p in dirty} if self.aliases.folds else dirty
        found: set[str] = set()
        if snapshot is not None:
            for path, row in tree.items():
                k = snapshot.get(path)
                if k is None or k.node != row.id or k.version != version(row) or _time_differs(k.sig, row):
                    found.add(path)
            found.update(p for p in snapshot if p not in tree)
        for path in dirty:
            if not path or self.rules.ignored(path):
                continue
            found.add(path)
            if os.path.isdir(join(self.root, path)) and not os.path.islink(join(self.root, path)):
                found.update(local_paths(self.root, self.rules, path))
            found.update(self.known.under(path))
            if path not in tree or tree[path].kind == "dir":  # a file has nothing under it: no walk of the tree
                found.update(p for p in tree if p.startswith(path + "/"))
        return self._spelled({p for p in found if p}, tree)

    # -- one path ----------------------------------------------------------------
    async def _settle_one(self, path: str, removals: list[tuple[str, str]]) -> None:
        local = self._local(path)
        if self.rules.ignored(path, local is not None and local.kind == "dir"):
            return
        known = self.known.get(path)
        row = await self._row(path)
        if row is not None and row.local:
            row = None
        sent = self.known.sent(path)
        if sent is not None:
            known = self._sent_before_a_crash(path, sent, known, row)
        if known is None and row is not None and self.aliases.folds and self._moved_in_case(path, row):
            local, known = self._local(path), self.known.get(path)
        if local is not None and known is None and row is None and not canonical(path.rpartition("/")[2], self.names):
            # Read as an alias it would come back under another name: syncing it would lose one of the two.
            raise OSError(errno.EINVAL, "a name this folder cannot sync (it reads as an alias); rename it")
        local_same = (local is None and known is None) or (
            local is not None and known is not None and local.same(known.sig))
        remote_same = (row is None and known is None) or (
            row is not None and known is not None and row.id == known.node and version(row) == known.version)
        if local_same and remote_same:
            if local is not None and row is not None and self._owner_changed(local, row):
                await self._send_owner(path, local, row)
            if local is not None and row is not None and _time_differs(local, row):
                self._take_time(path, local, row)
            return
        if local_same:
            await self._take_remote(path, local, known, row, removals)
        elif remote_same:
            await self._send_local(path, local, known, row, removals)
        else:
            await self._both_changed(path, local, known, row)

    async def _take_remote(self, path: str, local: LocalSig | None, known: Known | None, row: NodeRow | None,
                           removals: list[tuple[str, str]]) -> None:
        if row is None:
            removals.append((path, "local"))
            return
        if local is None and await self._moved_remotely(path, row):
            return
        await self._apply(path, row, local)

    async def _send_local(self, path: str, local: LocalSig | None, known: Known | None, row: NodeRow | None,
                          removals: list[tuple[str, str]]) -> None:
        if local is None:
            removals.append((path, "core"))
            return
        if row is None and await self._moved_locally(path, local):
            return
        await self._send(path, local, row)

    async def _both_changed(self, path: str, local: LocalSig | None, known: Known | None,
                            row: NodeRow | None) -> None:
        if local is None and row is None:
            self.known.drop(path)
        elif local is None:
            assert row is not None
            await self._apply(path, row, None)  # an edit there wins over a delete here
        elif row is None:
            self.known.drop(path)  # an edit here wins over a delete there: it goes up as new
            await self._send(path, local, None)
        elif local.kind == row.kind == "dir":
            self.known.put(path, row.id, version(row), local)
        elif local.kind == row.kind == "file" and await self._same_content(path, row):
            self.known.put(path, row.id, version(row), local)
        elif local.kind == row.kind == "symlink" and os.readlink(join(self.root, path)) == row.target:
            self.known.put(path, row.id, version(row), local)
        else:
            self._keep_aside(path)
            await self._apply(path, row, None)

    def _sent_before_a_crash(self, path: str, sent: tuple[str, LocalSig], known: Known | None,
                             row: NodeRow | None) -> Known | None:
        """The merge base of a file whose upload was under way when the sync was killed.

        The core took the upload, but the row saying so was never written
        (known.py, "Crash safety"). If the node at *path* holds exactly what was
        sent, it is the file as it was then: what was written on since (the rest
        of a `tar xf`) is a change here, not a conflict with this folder's own
        upload. Otherwise the upload never happened and the row stands.
        """
        content, sig = sent
        if row is not None and row.kind == "file" and content_of(row.size, row.blocks) == content:
            self.known.put(path, row.id, version(row), sig)
            return self.known.get(path)
        self.known.not_sending(path)
        return known

    def _take_time(self, path: str, local: LocalSig, row: NodeRow) -> None:
        """A time set elsewhere (``touch``, ``touch -h``) on a file or symlink unchanged here: set it here too.

        The version leaves times out (a download would be a change otherwise), so
        such a change used to reach no synced folder, ever.
        """
        full = join(self.root, path)
        if self._local(path) != local:
            self.again.add(path)  # written meanwhile: looked at again
            return
        if local.kind == "symlink":
            os.utime(full, ns=(row.mtime_ns, row.mtime_ns), follow_symlinks=False)  # the link's own
        else:
            os.utime(full, ns=(row.mtime_ns, row.mtime_ns))
        now = self._local(path)
        if now is not None:
            self.known.put(path, row.id, version(row), now)

    async def _same_content(self, path: str, row: NodeRow) -> bool:
        before, hashes, after = await _hashed(join(self.root, path))
        return before == after and tuple(hashes) == row.blocks

    def _keep_aside(self, path: str) -> str:
        """Move the local file at *path* to its conflict name (uploaded later as a new file)."""
        target = join(self.root, path)
        head = path.rpartition("/")[0]
        name = conflict_name(target.name, self.device, taken=lambda n: os.path.lexists(target.parent / n), folder=head)
        os.rename(target, target.parent / name)
        aside = f"{head}/{name}" if head else name
        self.again.add(aside)
        self.conflicts += 1
        log.info("kept %s as %s: it changed here and on another machine", path, aside)
        return aside

    # -- moves -------------------------------------------------------------------
    async def _respell(self, path: str) -> None:
        """The file the tree spells otherwise was renamed here to *path* in case only: so on the server."""
        old = self.aliases.same(path)
        if old == path or fold(old, self.names) != fold(path, self.names) or self.known.get(old) is None:
            return
        if self._local(old) is None or not canonical(path.rpartition("/")[2], self.names):
            return
        await self.core.rename(old, path)
        self.known.move(old, path)

    def _moved_in_case(self, path: str, row: NodeRow) -> bool:
        """The node was renamed elsewhere in case only (``Readme`` -> ``README``): renamed here too.

        A folding system holds the file under both spellings: neither a move
        nor a new file may be read into it.
        """
        for old in self.known.by_node(row.id):
            if old.path == path or fold(old.path, self.names) != fold(path, self.names):
                continue
            then = local_sig(self.root, old.path)
            if then is None or not then.same(old.sig):
                continue
            self._respell_here(old.path, path)
            return True
        return False

    def _respell_here(self, old: str, new: str) -> None:
        """Rename *old* to *new*, the same file in another case, through a third name.

        On Windows and macOS rename(2) changes the case; through lowntfs-3g a
        rename onto the name that finds the same file does nothing (one inode:
        POSIX), so the change goes through a hidden third name, on every
        system alike.  Crash-safe: the intent is on disk before the first
        rename and goes in the transaction that moves the rows; `recover`
        finishes the rest.  No await from the intent to the rows: the batch
        that takes the watcher's events for both renames sees a chain ending
        where the tree has the file already, which `_respell` leaves alone.
        """
        head = old.rpartition("/")[0]
        third = f"{CASE_PREFIX}{secrets.token_hex(6)}"
        between = f"{head}/{third}" if head else third
        self.known.set_meta(RESPELLING, json.dumps([old, between]), durable=True)
        os.rename(join(self.root, old), join(self.root, between))
        try:
            os.rename(join(self.root, between), join(self.root, new))
        except OSError:
            os.rename(join(self.root, between), join(self.root, old))
            self.known.set_meta(RESPELLING, "")
            raise
        self.known.move(old, new, done=RESPELLING)

    def recover(self) -> None:
        """Undo a case-only rename a crash cut short; the start-up scan then makes it again.

        The rows still name the old spelling (they move with the intent's end,
        in one transaction): a file found under the third name goes back to
        it, or beside it under a conflict name if something took that name
        meanwhile.  Otherwise the file is under one of its two spellings, which
        a folding system finds alike.
        """
        pending = self.known.meta(RESPELLING)
        if not pending:
            return
        old, between = json.loads(pending)
        left = join(self.root, between)
        if os.path.lexists(left):
            back = join(self.root, old)
            if os.path.lexists(back):
                parent = back.parent
                back = parent / conflict_name(back.name, self.device, taken=lambda n: os.path.lexists(parent / n))
            os.rename(left, back)
            log.info("a rename in case only of %s was cut short: put back as %s", old, back.name)
        self.known.set_meta(RESPELLING, "")

    async def _moved_locally(self, path: str, local: LocalSig) -> bool:
        """A new path whose inode the last synced state knew elsewhere: one rename in the core."""
        for old in self.known.by_ino(local.ino):
            if old.path == path or old.sig.kind != local.kind:
                continue
            then = self._local(old.path)
            if then is not None and then.ino == local.ino:
                continue  # still there too (a hard link): not a move
            if not self._same_thing(old, local, path):
                continue  # a new file or folder that took a deleted one's inode: not a move
            there = await self._row(old.path)
            if there is None or there.id != old.node or version(there) != old.version:
                continue
            await self.core.rename(old.path, path)
            self.known.move(old.path, path)
            if local.kind == "dir":
                # The rows under it moved with it, also of files changed in it since (this batch
                # looked for them under the old path): looked at again under the new one.
                self.again.add(path)
            await self._settle_one(path, [])  # an edit made with the move
            return True
        return False

    def _same_thing(self, old: Known, local: LocalSig, path: str) -> bool:
        """Whether *local* at *path* is what *old* knew, moved: not a new one on a reused inode.

        ext4 gives a new file the inode of one deleted a moment before; taken
        for a move, a delete went nowhere near the trash, and another machine's
        edit of the deleted file landed in the new one.  A move keeps a file's
        size and time, and a folder's entries.
        """
        if local.kind == "file":
            return (local.size, local.mtime_ns) == (old.sig.size, old.sig.mtime_ns)
        if local.kind != "dir":
            return True  # a symlink's inode says enough: a new one is rarely made over a deleted one
        held = False
        for below in self.known.under(old.path):
            name = below[len(old.path) + 1:]
            k = self.known.get(below) if "/" not in name else None
            if k is None:
                continue
            held = True
            now = self._local(f"{path}/{name}")
            if now is not None and now.ino == k.sig.ino:
                return True  # one of its entries came along
        return not held  # it held nothing: a move and a new empty folder come to the same

    async def _moved_remotely(self, path: str, row: NodeRow) -> bool:
        """A new remote path whose node is here, unchanged, under another path: one local rename."""
        for old in self.known.by_node(row.id):
            if old.path == path:
                continue
            then = self._local(old.path)
            if then is None or not then.same(old.sig):
                continue
            still = await self._row(old.path)
            if still is not None and still.id == row.id:
                continue  # a second name of the same node
            if self._occupied(path):
                self.again.add(path)
                return True  # looked at again once the other spelling's file moved or went
            join(self.root, path).parent.mkdir(parents=True, exist_ok=True)
            os.rename(join(self.root, old.path), join(self.root, path))
            self.known.move(old.path, path)
            if then.kind == "dir":
                # Changes made in it here and not synced yet moved along unseen: looked at under its new path.
                self.again.add(path)
            await self._settle_one(path, [])
            return True
        return False

    # -- local -> core -----------------------------------------------------------
    async def _send(self, path: str, local: LocalSig, row: NodeRow | None) -> None:
        full = join(self.root, path)
        if row is not None and row.kind != local.kind:
            await self.core.remove(path, row.kind == "dir")
            row = None
        written: NodeRow | None = None
        target = ""
        if local.kind == "dir":
            if row is None:
                await self.core.mkdir(path, os.lstat(full).st_mode)
        elif local.kind == "symlink":
            target = os.readlink(full)
            if row is not None and row.target != target:
                await self.core.remove(path, False)
                row = None
            if row is None:
                await self.core.symlink(path, target)
            if row is None or row.mtime_ns != local.mtime_ns:
                await self.core.set_mtime(path, local.mtime_ns)  # a link's own time: tar, rsync -a, touch -h
        elif local.kind == "file":
            written = await self._upload(path, local, row)
            if written is None:
                return
        else:
            return  # sockets, FIFOs and devices in a synced folder stay local
        new = await self._row(path)
        if new is not None and (new.kind != local.kind or (
                (new.ino, new.blocks) != (written.ino, written.blocks) if written is not None
                else local.kind == "symlink" and new.target != target)):
            self._settled_elsewhere(path, local, new)
            return
        if new is not None and self._owner_changed(local, new):
            new = await self._send_owner(path, local, new)
        if new is not None:
            self.known.put(path, new.id, version(new), local)
            if path not in self.again:
                self.hurry(new.id)

    def _settled_elsewhere(self, path: str, local: LocalSig, now: NodeRow) -> None:
        """The uploader settled a conflict while this upload was on its way: *now* is at *path*.

        What was written is a conflict copy of its own (an update another machine
        beat) or went to a conflict name (a new file, link or folder where another
        had come): kept either way.  Recorded as synced with *now*, the folder would keep this
        machine's bytes at the path and the server the other's, for good.  If the
        file is still what was sent, the path takes *now* (a download); if it
        changed since, both sides changed: a conflict copy.
        """
        log.info("%s: another machine's version came first; this one is kept beside it", path)
        if self._local(path) == local:
            self.known.put(path, now.id, "", local)  # no version is "": the other side changed
        else:
            self.known.not_sending(path)
        self.again.add(path)

    def _owner_changed(self, local: LocalSig, row: NodeRow) -> bool:
        """True if the file's owner or group here is not the node's: a chown made here (looked at as root only).

        Run by another user, every file is the syncing user's whatever the
        node's owner is (`_take_owner`): a difference then says nothing.
        """
        return _MAY_CHOWN and local.uid >= 0 and (local.uid, local.gid) != self.core.shown_owner(row)

    async def _send_owner(self, path: str, local: LocalSig, row: NodeRow) -> NodeRow | None:
        """Send a chown made here: the core's setattr, one SetAttr op as the mount sends; the new node."""
        uid, gid = self.core.shown_owner(row)
        await self.core.chown(path, local.uid if local.uid != uid else None, local.gid if local.gid != gid else None)
        new = await self._row(path)
        if new is not None:
            self.known.put(path, new.id, version(new), local)  # the owner is part of the version
        return new

    async def _upload(self, path: str, local: LocalSig, row: NodeRow | None) -> NodeRow | None:
        """Send the file's content unless the replica has it already; the node as written, or None if
        it is still changing."""
        full = join(self.root, path)
        if self.busy(path):
            self.again.add(path)  # written to just now and not closed: after the next quiet moment
            return None
        before, hashes, after = await _hashed(full, local.size)
        if before != after or before != local:
            self.again.add(path)  # still being written: after the next quiet moment
            return None
        if row is not None and row.kind == "file" and tuple(hashes) == row.blocks:
            if row.mode & 0o7777 != local.mode or row.mtime_ns != local.mtime_ns:
                await self.core.set_attrs(path, local.mode, local.mtime_ns)
            return row
        self.known.sending(path, content_of(local.size, hashes), local)  # until `put` says it is done
        with open(full, "rb") as f:
            try:
                written = await self.core.write_file(path, f, local.mode, local.mtime_ns, row)
            except ChangedMeanwhile:
                self.known.not_sending(path)
                self.again.add(path)  # a remote change arrived since: decided again, as a conflict
                return None
            if self._local(path) != local:
                self.again.add(path)  # changed while read: the next batch sends the rest
        return written

    # -- core -> local -----------------------------------------------------------
    async def _apply(self, path: str, row: NodeRow, expected: LocalSig | None) -> None:
        if self._occupied(path):
            self.again.add(path)  # another spelling's file: after it moved or went, in a later batch
            return
        full = join(self.root, path)
        full.parent.mkdir(parents=True, exist_ok=True)
        if row.kind == "dir":
            if expected is not None and expected.kind != "dir":
                self._keep_aside(path)
                expected = None
            if expected is None:
                full.mkdir(exist_ok=True)
            self._take_owner(full, row)
            now = self._local(path)
            if now is not None:
                self.known.put(path, row.id, version(row), now)
        elif row.kind in ("file", "symlink"):
            tmp = full.parent / f"{TMP_PREFIX}{secrets.token_hex(6)}"
            try:
                fetched = await self._fetch(row, tmp)
                # No await from the check to the rename: the download lands only on what K knew.
                if self._local(path) != expected:
                    if self._local(path) is not None:
                        self._keep_aside(path)
                elif expected is not None and expected.kind == "dir":
                    self._keep_aside(path)
                os.replace(tmp, full)
            finally:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
            # What was written, not what is there a moment later: a program writing the file right
            # after the rename must read as a change here, not as the download.
            self.known.put(path, row.id, version(row), fetched)

    async def _fetch(self, row: NodeRow, tmp: Path) -> LocalSig:
        """Write *row* to *tmp*; what it holds then (a rename keeps all of it: inode, size, mtime, mode)."""
        if row.kind == "symlink":
            os.symlink(row.target, tmp)
            self._take_owner(tmp, row)
            if _LINK_TIMES:
                os.utime(tmp, ns=(row.mtime_ns, row.mtime_ns), follow_symlinks=False)
        else:
            with open(tmp, "wb") as f:
                await self.core.read_file(row.ino, f)
                f.flush()
                self._take_owner(tmp, row)  # before the mode: chown clears set-id bits
                portable.fchmod(f.fileno(), row.mode & 0o7777)
                await trio.to_thread.run_sync(os.fsync, f.fileno())
            os.utime(tmp, ns=(row.mtime_ns, row.mtime_ns))
        return sig_of(os.lstat(tmp))

    # -- removals ----------------------------------------------------------------
    async def _remove(self, path: str, side: str) -> None:
        """Remove *path* on *side*, deepest first, if it still is what the last synced state knew."""
        known = self.known.get(path)
        if known is None:
            return
        local = self._local(path)
        row = await self._row(path)
        if side == "local":
            if row is not None or local is None or not local.same(known.sig):
                return
            try:
                if local.kind == "dir":
                    os.rmdir(join(self.root, path))
                else:
                    os.unlink(join(self.root, path))
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise
                self.again.add(path)  # new files here: the folder goes up again with them
            self.known.drop(path)
            return
        if local is not None or row is None or row.id != known.node:
            return
        try:
            await self.core.remove(path, row.kind == "dir")
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
            self.again.add(path)  # new files there: the folder comes back with them
        self.known.drop(path)

    def _take_owner(self, path: Path, row: NodeRow) -> None:
        """Give *path* the owner and group *row* has as shown here, where this process may (as root).

        The store owner's nodes are the syncing user's (also a folder that
        had another owner, or a download in a setgid folder): what is on disk
        is the node's, so a difference later is a chown made here.  A user who
        is not root cannot give files away and leaves every file theirs.
        """
        if sys.platform != "win32" and _MAY_CHOWN:
            os.lchown(path, *self.core.shown_owner(row))


#: Only root may give files away (Windows has no POSIX owners): only then are owners synced both ways.
_MAY_CHOWN = sys.platform != "win32" and os.geteuid() == 0
