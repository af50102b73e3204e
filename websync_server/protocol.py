"""Wire models and rules shared by the WebSync server and client.

This module is the whole contract between ``websync_server`` and ``websync_fs``:
neither imports the other's internals.  It must stay free of third-party imports
so the client can load it without the server's dependencies.

See ``docs/protocol.md`` for the HTTP API built on these models.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, NewType, Union

API = "/v1"
BLOCK_SIZE = 4 * 1024 * 1024
NAME_MAX = 255
#: Longest long-poll a server will hold, in seconds.
WAIT_MAX = 60.0

NodeId = NewType("NodeId", str)
BlockHash = NewType("BlockHash", str)

ROOT_ID = NodeId("root")

KIND_FILE = "file"
KIND_DIR = "dir"
KIND_SYMLINK = "symlink"
#: FIFOs, sockets and device nodes: the type is in ``mode``'s S_IFMT bits.
KIND_SPECIAL = "special"
KINDS = frozenset({KIND_FILE, KIND_DIR, KIND_SYMLINK, KIND_SPECIAL})

#: Limits of extended attributes (``user.*`` only), as ext4 and XFS give.
XATTR_NAME_MAX = 255
XATTR_VALUE_MAX = 64 * 1024
XATTR_TOTAL_MAX = 256 * 1024

_NODE_ID_RE = re.compile(r"^(root|[0-9a-f]{32})$")
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


class InvalidName(ValueError):
    """A path component the store refuses; the message says why."""


def validate_name(name: str) -> str:
    """Return *name* if it may be a directory entry, else raise `InvalidName`.

    Names are any UTF-8 string of 1..255 bytes without ``/`` or NUL, and not
    ``.`` or ``..`` -- the same rule as Linux filesystems, so every name a local
    disk accepts is stored faithfully.
    """
    if not isinstance(name, str) or not name:
        raise InvalidName("a name must not be empty")
    if name in (".", ".."):
        raise InvalidName(f"{name!r} is not a valid name")
    if "/" in name or "\0" in name:
        raise InvalidName(f"{name!r} contains '/' or NUL")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidName(f"{name!r} is not valid UTF-8") from exc
    if len(encoded) > NAME_MAX:
        raise InvalidName(f"name is {len(encoded)} bytes long, the limit is {NAME_MAX}")
    return name


def is_node_id(value: object) -> bool:
    return isinstance(value, str) and bool(_NODE_ID_RE.match(value))


def is_block_hash(value: object) -> bool:
    return isinstance(value, str) and bool(_HASH_RE.match(value))


def new_node_id() -> NodeId:
    """A fresh node id; clients choose ids so they can create while offline."""
    return NodeId(uuid.uuid4().hex)


def block_count(size: int) -> int:
    return (size + BLOCK_SIZE - 1) // BLOCK_SIZE


@dataclass(frozen=True)
class Node:
    """A file, directory or symlink as the journal reports it.

    ``seq`` is the store sequence number of the commit that last changed the node;
    clients send it back as the precondition of their next change.
    """

    id: NodeId
    kind: str
    mode: int
    size: int
    mtime_ns: int
    seq: int
    blocks: tuple[BlockHash, ...] = ()
    target: str = ""
    deleted: bool = False
    device: str = ""
    rdev: int = 0
    #: Extended attributes: name -> value in base64.
    xattrs: dict[str, str] = field(default_factory=dict, hash=False, compare=True)
    #: Owner and group set by chown; None: the store's owner (docs/posix.md, "Owners").
    uid: int | None = None
    gid: int | None = None

    def to_wire(self) -> dict[str, Any]:
        # By hand, not dataclasses.asdict: a listing of 200,000 files spent most of its time
        # in asdict's deep copies (docs/benchmarks.md, "A new machine joining").
        wire = {
            "id": self.id, "kind": self.kind, "mode": self.mode, "size": self.size, "mtime_ns": self.mtime_ns,
            "seq": self.seq, "blocks": list(self.blocks), "target": self.target, "deleted": self.deleted,
            "device": self.device, "rdev": self.rdev, "xattrs": dict(self.xattrs),
        }
        # Only an owner set by chown: the store owner's nodes read as before.
        if self.uid is not None:
            wire["uid"] = self.uid
        if self.gid is not None:
            wire["gid"] = self.gid
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Node:
        return cls(
            id=NodeId(data["id"]),
            kind=data["kind"],
            mode=int(data["mode"]),
            size=int(data["size"]),
            mtime_ns=int(data["mtime_ns"]),
            seq=int(data["seq"]),
            blocks=tuple(BlockHash(h) for h in data.get("blocks", ())),
            target=data.get("target", ""),
            deleted=bool(data.get("deleted", False)),
            device=data.get("device", ""),
            rdev=int(data.get("rdev", 0)),
            xattrs=dict(data.get("xattrs") or {}),
            uid=_owner_id(data.get("uid")),
            gid=_owner_id(data.get("gid")),
        )

    def to_row(self) -> list[Any]:
        return compact_node([self.id, self.kind, self.mode, self.size, self.mtime_ns, self.seq, self.device,
                             list(self.blocks), self.target, self.deleted, self.rdev, dict(self.xattrs),
                             self.uid, self.gid])

    @classmethod
    def from_row(cls, row: list[Any]) -> Node:
        n = len(row)
        return cls(
            id=NodeId(row[0]), kind=row[1], mode=int(row[2]), size=int(row[3]), mtime_ns=int(row[4]),
            seq=int(row[5]),
            device=row[6] if n > 6 else "",
            blocks=tuple(BlockHash(h) for h in row[7]) if n > 7 else (),
            target=row[8] if n > 8 else "",
            deleted=bool(row[9]) if n > 9 else False,
            rdev=int(row[10]) if n > 10 else 0,
            xattrs=dict(row[11]) if n > 11 else {},
            uid=_owner_id(row[12]) if n > 12 else None,
            gid=_owner_id(row[13]) if n > 13 else None,
        )


def _owner_id(value: Any) -> int | None:
    return None if value is None else int(value)


#: The compact form of a node (``format=compact``, docs/protocol.md): its fields in this
#: order, the trailing ones that hold their default left out (a listing of files
#: mostly ends after ``blocks``; an empty file after ``device``).
NODE_ROW = ("id", "kind", "mode", "size", "mtime_ns", "seq", "device", "blocks", "target", "deleted", "rdev", "xattrs",
            "uid", "gid")
#: The compact form of an entry: all its fields, in this order (``node`` null: removed).
ENTRY_ROW = ("parent", "name", "node", "seq")
#: Fields every compact node has: those before ``device``.
NODE_ROW_MIN = 6
_ROW_DEFAULTS: tuple[Any, ...] = ("", [], "", False, 0, {}, None, None)


def compact_node(row: list[Any]) -> list[Any]:
    """Drop the trailing fields of a node in the compact form that hold their default; *row* is changed."""
    end = len(row)
    while end > NODE_ROW_MIN and row[end - 1] == _ROW_DEFAULTS[end - 1 - NODE_ROW_MIN]:
        end -= 1
    del row[end:]
    return row


@dataclass(frozen=True)
class Entry:
    """A directory entry ``parent/name``; ``node`` is None for a removed entry."""

    parent: NodeId
    name: str
    node: NodeId | None
    seq: int

    def to_wire(self) -> dict[str, Any]:
        return {"parent": self.parent, "name": self.name, "node": self.node, "seq": self.seq}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Entry:
        node = data.get("node")
        return cls(
            parent=NodeId(data["parent"]),
            name=data["name"],
            node=NodeId(node) if node is not None else None,
            seq=int(data["seq"]),
        )

    def to_row(self) -> list[Any]:
        return [self.parent, self.name, self.node, self.seq]

    @classmethod
    def from_row(cls, row: list[Any]) -> Entry:
        parent, name, node, seq = row
        return cls(parent=NodeId(parent), name=name, node=NodeId(node) if node is not None else None, seq=int(seq))


#: Values of the ``format`` parameter of the changes call.
FORMAT_OBJECTS = "objects"
FORMAT_COMPACT = "compact"
FORMATS = frozenset({FORMAT_OBJECTS, FORMAT_COMPACT})


@dataclass(frozen=True)
class Changes:
    """Answer to "what changed since cursor C".

    With ``reset`` set the client's cursor is older than the server keeps
    tombstones for: it must drop its replica and list again from cursor 0.
    With ``ahead`` too, the cursor is past what the server has (it was
    restored from a backup): the client has seen commits the server lost, and
    sends again what it has that the server does not know.  A listing from cursor 0 holds only live nodes and entries.  ``more`` says
    another page follows; pages always end on a whole commit.  ``shares`` is
    the user's shares stamp, on pages of their own store only (None: not said).
    """

    cursor: int
    nodes: tuple[Node, ...] = ()
    entries: tuple[Entry, ...] = ()
    reset: bool = False
    more: bool = False
    ahead: bool = False
    shares: int | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "cursor": self.cursor,
            "reset": self.reset,
            "more": self.more,
            "nodes": [n.to_wire() for n in self.nodes],
            "entries": [e.to_wire() for e in self.entries],
        }
        if self.ahead:
            wire["ahead"] = True
        if self.shares is not None:
            wire["shares"] = self.shares
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Changes:
        return cls(
            cursor=int(data["cursor"]),
            reset=bool(data.get("reset", False)),
            more=bool(data.get("more", False)),
            ahead=bool(data.get("ahead", False)),
            nodes=tuple(Node.from_wire(n) for n in data.get("nodes", ())),
            entries=tuple(Entry.from_wire(e) for e in data.get("entries", ())),
            shares=_stamp(data),
        )

    def to_rows(self) -> ChangeRows:
        return ChangeRows(
            cursor=self.cursor, reset=self.reset, more=self.more, ahead=self.ahead,
            nodes=[n.to_row() for n in self.nodes], entries=[e.to_row() for e in self.entries], shares=self.shares,
        )


@dataclass(frozen=True)
class ChangeRows:
    """A page of `Changes` in the compact form: records as arrays (``NODE_ROW``; entries
    ``[parent, name, node, seq]``), left as the wire has them.

    A first listing of a big store goes from these straight into the client's
    bulk insert: building a `Node` a record cost more than the rest of the
    listing's parsing (docs/benchmarks.md, "A new machine joining").
    """

    cursor: int
    nodes: list[list[Any]] = field(default_factory=list)
    entries: list[list[Any]] = field(default_factory=list)
    reset: bool = False
    more: bool = False
    ahead: bool = False
    shares: int | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "format": FORMAT_COMPACT, "cursor": self.cursor, "reset": self.reset, "more": self.more,
            "nodes": self.nodes, "entries": self.entries,
        }
        if self.ahead:
            wire["ahead"] = True
        if self.shares is not None:
            wire["shares"] = self.shares
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ChangeRows:
        """Read a page in either form (a server that does not know ``format`` answers with objects)."""
        if data.get("format") != FORMAT_COMPACT:
            return Changes.from_wire(data).to_rows()
        nodes, entries = data.get("nodes", []), data.get("entries", [])
        # The shape is checked here, once, so that a consumer may index the arrays blindly.
        if not isinstance(nodes, list) or not all(
            type(r) is list and NODE_ROW_MIN <= len(r) <= len(NODE_ROW) for r in nodes
        ):
            raise ValueError(f"a compact node is an array of {NODE_ROW_MIN} to {len(NODE_ROW)} fields")
        if not isinstance(entries, list) or not all(type(r) is list and len(r) == 4 for r in entries):
            raise ValueError("a compact entry is an array of 4 fields")
        return cls(
            cursor=int(data["cursor"]), reset=bool(data.get("reset", False)), more=bool(data.get("more", False)),
            ahead=bool(data.get("ahead", False)), nodes=nodes, entries=entries, shares=_stamp(data),
        )

    def to_changes(self) -> Changes:
        return Changes(
            cursor=self.cursor, reset=self.reset, more=self.more, ahead=self.ahead,
            nodes=tuple(Node.from_row(r) for r in self.nodes), entries=tuple(Entry.from_row(e) for e in self.entries),
            shares=self.shares,
        )


def _stamp(data: dict[str, Any]) -> int | None:
    """The ``shares`` stamp of a changes page; None from a server that does not send it."""
    stamp = data.get("shares")
    return None if stamp is None else int(stamp)


#: ``"uid": "owner"`` (or gid) on the wire, `OWNER` in an op: the store's owner,
#: shown on each machine as the user who mounted it (docs/posix.md).
OWNER = -1

# Commit operations.  A batch is a list of these, applied atomically in order;
# see docs/protocol.md for each one's precondition and 409 reasons.
OP_MKDIR = "mkdir"
OP_CREATE = "create"
OP_SYMLINK = "symlink"
OP_UPDATE = "update"
OP_SETATTR = "setattr"
OP_RENAME = "rename"
OP_DELETE = "delete"
OP_RESTORE = "restore"
OP_LINK = "link"
OP_MKNOD = "mknod"
OPS = frozenset(
    {OP_MKDIR, OP_CREATE, OP_SYMLINK, OP_UPDATE, OP_SETATTR, OP_RENAME, OP_DELETE, OP_RESTORE, OP_LINK, OP_MKNOD}
)



@dataclass(frozen=True, kw_only=True)
class _Op:
    """A commit operation as a typed value; `to_wire` gives the JSON object a batch carries.

    Both sides build ops as these values: the client to queue and send them,
    the server (``websync_server/ops.py``) as what it checked a wire op into.
    A field left None is left out of the wire object: "no change" for a
    setattr, "no precondition" for ``base``; new nodes' empty ``xattrs`` too.
    """

    KIND: ClassVar[str]
    id: NodeId

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"op": self.KIND}
        for name in _field_names(type(self)):
            value = getattr(self, name)
            if value is None or (name == "xattrs" and value == {}):
                continue
            if name in ("uid", "gid") and value == OWNER:
                value = "owner"
            wire[name] = list(value) if isinstance(value, tuple) else value
        return wire


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    # Every local change is made into its wire form: `fields` builds its answer on each call.
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


@dataclass(frozen=True, kw_only=True)
class Mkdir(_Op):
    KIND: ClassVar[str] = OP_MKDIR
    parent: NodeId
    name: str
    mode: int
    mtime_ns: int
    xattrs: dict[str, str] = field(default_factory=dict)
    #: Owner and group; None or `OWNER`: the store's owner.
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True, kw_only=True)
class Create(_Op):
    KIND: ClassVar[str] = OP_CREATE
    parent: NodeId
    name: str
    mode: int
    mtime_ns: int
    size: int
    blocks: tuple[BlockHash, ...]
    xattrs: dict[str, str] = field(default_factory=dict)
    #: Owner and group; None or `OWNER`: the store's owner.
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True, kw_only=True)
class Symlink(_Op):
    KIND: ClassVar[str] = OP_SYMLINK
    parent: NodeId
    name: str
    target: str
    mtime_ns: int
    xattrs: dict[str, str] = field(default_factory=dict)
    #: Owner and group; None or `OWNER`: the store's owner.
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True, kw_only=True)
class Update(_Op):
    """New content of a file; ``base`` (the node's seq it was made on) is set by the sender."""

    KIND: ClassVar[str] = OP_UPDATE
    size: int
    blocks: tuple[BlockHash, ...]
    mtime_ns: int
    mode: int | None = None
    base: int | None = None


@dataclass(frozen=True, kw_only=True)
class Mknod(_Op):
    KIND: ClassVar[str] = OP_MKNOD
    parent: NodeId
    name: str
    mode: int  # with the S_IFMT bits
    rdev: int
    mtime_ns: int
    xattrs: dict[str, str] = field(default_factory=dict)
    #: Owner and group; None or `OWNER`: the store's owner.
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True, kw_only=True)
class SetAttr(_Op):
    KIND: ClassVar[str] = OP_SETATTR
    mode: int | None = None
    mtime_ns: int | None = None
    #: name -> base64 value to set, or None to remove; None: leave them alone.
    xattrs: dict[str, str | None] | None = None
    #: The node's seq this change was made on (optional, as for delete).
    base: int | None = None
    #: New owner and group (`OWNER`: the store's owner); None: leave it alone.
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True, kw_only=True)
class Rename(_Op):
    KIND: ClassVar[str] = OP_RENAME
    parent: NodeId
    name: str
    new_parent: NodeId
    new_name: str
    replace: NodeId | None = None
    #: Swap with the node at the target (RENAME_EXCHANGE) instead of moving.
    exchange: NodeId | None = None


@dataclass(frozen=True, kw_only=True)
class Delete(_Op):
    KIND: ClassVar[str] = OP_DELETE
    parent: NodeId
    name: str
    base: int | None = None


@dataclass(frozen=True, kw_only=True)
class Link(_Op):
    KIND: ClassVar[str] = OP_LINK
    parent: NodeId
    name: str


@dataclass(frozen=True, kw_only=True)
class Restore(_Op):
    KIND: ClassVar[str] = OP_RESTORE
    parent: NodeId
    name: str


Op = Union[Mkdir, Create, Symlink, Mknod, Update, SetAttr, Rename, Delete, Link, Restore]


# Reasons a commit is refused with 409.
CONFLICT_EXISTS = "exists"  # the target name is taken
CONFLICT_MISSING = "missing"  # the node or entry the op names is gone
CONFLICT_CHANGED = "changed"  # the node's seq is not the precondition's
CONFLICT_NOT_EMPTY = "not_empty"  # deleting a directory that has entries
CONFLICT_NOT_DIR = "not_dir"  # a parent that is not a directory
CONFLICT_CYCLE = "cycle"  # moving a directory into itself


@dataclass(frozen=True)
class Conflict:
    """Why a commit batch was refused: which op and for what reason."""

    index: int
    reason: str
    message: str = ""
    node: Node | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "error": "conflict",
            "index": self.index,
            "reason": self.reason,
            "message": self.message,
            "node": self.node.to_wire() if self.node else None,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Conflict:
        node = data.get("node")
        return cls(
            index=int(data["index"]),
            reason=data["reason"],
            message=data.get("message", ""),
            node=Node.from_wire(node) if node else None,
        )


@dataclass(frozen=True)
class NodeState:
    """A node with the live entries that name it (GET .../nodes/{id})."""

    node: Node
    entries: tuple[Entry, ...] = field(default_factory=tuple)

    def to_wire(self) -> dict[str, Any]:
        return {"node": self.node.to_wire(), "entries": [e.to_wire() for e in self.entries]}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> NodeState:
        return cls(
            node=Node.from_wire(data["node"]),
            entries=tuple(Entry.from_wire(e) for e in data.get("entries", ())),
        )
