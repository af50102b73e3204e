"""Commit operations: the wire dicts of a batch checked and turned into typed values.

`parse_ops` is the only way a batch reaches the store, so every name, id, hash
and integer the store writes has passed through here.  Anything malformed raises
`InvalidRequest` naming the op's index; nothing here looks at the database, so
these are the checks that don't depend on state (those answer 409 from
``store.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from ._exceptions import InvalidRequest
from .protocol import (
    OP_CREATE,
    OP_DELETE,
    OP_MKDIR,
    OP_RENAME,
    OP_SETATTR,
    OP_SYMLINK,
    OP_UPDATE,
    ROOT_ID,
    BlockHash,
    InvalidName,
    NodeId,
    block_count,
    is_block_hash,
    is_node_id,
    validate_name,
)

__all__ = [
    "BATCH_ID_MAX",
    "Create",
    "Delete",
    "Mkdir",
    "Op",
    "Rename",
    "SetAttr",
    "Symlink",
    "Update",
    "block_hashes",
    "parse_batch_id",
    "parse_ops",
]

BATCH_ID_MAX = 128
# Linux PATH_MAX less the NUL: the longest target symlink(2) takes.
SYMLINK_TARGET_MAX = 4095
# st_mode of any file type fits in 16 bits; the stored mode keeps only the
# permission bits (S_IMODE) because the type is the node's `kind`.  Accepting the
# type bits spares clients from masking st_mode themselves.
_MODE_MAX = 0o177777
_PERMISSION_BITS = 0o7777
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
SYMLINK_MODE = 0o777


@dataclass(frozen=True)
class Mkdir:
    id: NodeId
    parent: NodeId
    name: str
    mode: int
    mtime_ns: int


@dataclass(frozen=True)
class Create:
    id: NodeId
    parent: NodeId
    name: str
    mode: int
    mtime_ns: int
    size: int
    blocks: tuple[BlockHash, ...]


@dataclass(frozen=True)
class Symlink:
    id: NodeId
    parent: NodeId
    name: str
    target: str
    mtime_ns: int


@dataclass(frozen=True)
class Update:
    id: NodeId
    base: int
    size: int
    blocks: tuple[BlockHash, ...]
    mtime_ns: int
    mode: int | None


@dataclass(frozen=True)
class SetAttr:
    id: NodeId
    mode: int | None
    mtime_ns: int | None


@dataclass(frozen=True)
class Rename:
    id: NodeId
    parent: NodeId
    name: str
    new_parent: NodeId
    new_name: str
    replace: NodeId | None


@dataclass(frozen=True)
class Delete:
    id: NodeId
    parent: NodeId
    name: str
    base: int | None


Op = Union[Mkdir, Create, Symlink, Update, SetAttr, Rename, Delete]


def parse_batch_id(value: object) -> str:
    """Return the client's batch id if it is a usable one, else raise `InvalidRequest`."""
    if not isinstance(value, str) or not 1 <= len(value) <= BATCH_ID_MAX or not value.isprintable():
        raise InvalidRequest(f"batch must be a printable string of 1 to {BATCH_ID_MAX} characters")
    return value


def parse_ops(value: object) -> list[Op]:
    """Check a batch's wire ops and return them typed; raise `InvalidRequest` on the first bad one."""
    if not isinstance(value, list) or not value:
        raise InvalidRequest("ops must be a non-empty list")
    return [_parse_op(index, raw) for index, raw in enumerate(value)]


def block_hashes(ops: list[Op]) -> set[BlockHash]:
    """Every block the batch's creates and updates name."""
    found: set[BlockHash] = set()
    for op in ops:
        if isinstance(op, (Create, Update)):
            found.update(op.blocks)
    return found


def _parse_op(index: int, raw: object) -> Op:
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"op {index}: an op must be a JSON object")
    f = _Fields(index, raw)
    kind = raw.get("op")
    if kind == OP_MKDIR:
        return Mkdir(f.node_id("id"), f.node_id("parent"), f.name("name"), f.mode("mode"), f.int64("mtime_ns"))
    if kind == OP_CREATE:
        size, blocks = f.content()
        return Create(
            f.node_id("id"), f.node_id("parent"), f.name("name"), f.mode("mode"), f.int64("mtime_ns"), size, blocks
        )
    if kind == OP_SYMLINK:
        return Symlink(f.node_id("id"), f.node_id("parent"), f.name("name"), f.target("target"), f.int64("mtime_ns"))
    if kind == OP_UPDATE:
        size, blocks = f.content()
        return Update(f.node_id("id"), f.seq("base"), size, blocks, f.int64("mtime_ns"), f.optional_mode("mode"))
    if kind == OP_SETATTR:
        mode, mtime_ns = f.optional_mode("mode"), f.optional_int64("mtime_ns")
        if mode is None and mtime_ns is None:
            raise InvalidRequest(f"op {index}: setattr needs mode or mtime_ns")
        return SetAttr(f.node_id("id"), mode, mtime_ns)
    if kind == OP_RENAME:
        node_id = f.not_root("id", "renamed")
        replace = f.optional_node_id("replace")
        if replace == ROOT_ID:
            raise InvalidRequest(f"op {index}: the root can't be replaced")
        return Rename(
            node_id, f.node_id("parent"), f.name("name"), f.node_id("new_parent"), f.name("new_name"), replace
        )
    if kind == OP_DELETE:
        return Delete(f.not_root("id", "deleted"), f.node_id("parent"), f.name("name"), f.optional_seq("base"))
    raise InvalidRequest(f"op {index}: unknown op {kind!r}")


class _Fields:
    """Typed access to one wire op's fields; every failure names the op and field."""

    def __init__(self, index: int, raw: Mapping[str, Any]) -> None:
        self._index = index
        self._raw = raw

    def _fail(self, key: str, why: str) -> InvalidRequest:
        return InvalidRequest(f"op {self._index}: {key} {why}")

    def _get(self, key: str) -> Any:
        if key not in self._raw:
            raise self._fail(key, "is missing")
        return self._raw[key]

    def node_id(self, key: str) -> NodeId:
        value = self._get(key)
        if not is_node_id(value):
            raise self._fail(key, "must be 'root' or 32 lower-case hex digits")
        return NodeId(value)

    def optional_node_id(self, key: str) -> NodeId | None:
        return None if self._raw.get(key) is None else self.node_id(key)

    def not_root(self, key: str, what: str) -> NodeId:
        node_id = self.node_id(key)
        if node_id == ROOT_ID:
            raise self._fail(key, f"is the root, which can't be {what}")
        return node_id

    def name(self, key: str) -> str:
        try:
            return validate_name(self._get(key))
        except InvalidName as exc:
            raise self._fail(key, f"is not a valid name: {exc}") from exc

    def int64(self, key: str, low: int = _INT64_MIN, high: int = _INT64_MAX) -> int:
        value = self._get(key)
        # bool is an int in Python but never a number on the wire.
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self._fail(key, f"must be an integer from {low} to {high}")
        return value

    def optional_int64(self, key: str) -> int | None:
        return None if self._raw.get(key) is None else self.int64(key)

    def seq(self, key: str) -> int:
        return self.int64(key, 0)

    def optional_seq(self, key: str) -> int | None:
        return None if self._raw.get(key) is None else self.seq(key)

    def mode(self, key: str) -> int:
        return self.int64(key, 0, _MODE_MAX) & _PERMISSION_BITS

    def optional_mode(self, key: str) -> int | None:
        return None if self._raw.get(key) is None else self.mode(key)

    def target(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value or "\0" in value:
            raise self._fail(key, "must be a non-empty string without NUL")
        try:
            encoded = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise self._fail(key, "is not valid UTF-8") from exc
        if len(encoded) > SYMLINK_TARGET_MAX:
            raise self._fail(key, f"is longer than {SYMLINK_TARGET_MAX} bytes")
        return value

    def content(self) -> tuple[int, tuple[BlockHash, ...]]:
        """A file's ``size`` and ``blocks``, with as many blocks as the size needs."""
        size = self.int64("size", 0)
        blocks = self._get("blocks")
        if not isinstance(blocks, list) or not all(is_block_hash(h) for h in blocks):
            raise self._fail("blocks", "must be a list of 64 lower-case hex digit SHA-256 hashes")
        if len(blocks) != block_count(size):
            raise self._fail("blocks", f"has {len(blocks)} blocks, a file of {size} bytes has {block_count(size)}")
        return size, tuple(BlockHash(h) for h in blocks)
