"""Commit operations: the wire dicts of a batch checked and turned into typed values.

`parse_ops` is the only way a batch reaches the store, so every name, id, hash
and integer the store writes has passed through here.  Anything malformed raises
`InvalidRequest` naming the op's index; nothing here looks at the database, so
these are the checks that don't depend on state (those answer 409 from
``store.py``).
"""

from __future__ import annotations

import base64
import binascii
import stat
from collections.abc import Mapping
from typing import Any

from ._exceptions import InvalidRequest
from .protocol import (
    OP_CREATE,
    OP_DELETE,
    OP_LINK,
    OP_MKDIR,
    OP_MKNOD,
    OP_RENAME,
    OP_RESTORE,
    OP_SETATTR,
    OP_SYMLINK,
    OP_UPDATE,
    OWNER,
    ROOT_ID,
    XATTR_NAME_MAX,
    XATTR_TOTAL_MAX,
    XATTR_VALUE_MAX,
    BlockHash,
    Create,
    Delete,
    InvalidName,
    Link,
    Mkdir,
    Mknod,
    Op,
    Rename,
    Restore,
    SetAttr,
    Symlink,
    Update,
    NodeId,
    block_count,
    is_block_hash,
    is_node_id,
    validate_name,
)

__all__ = [
    "BATCH_ID_MAX",
    "OPS_MAX",
    "OWNER",
    "Create",
    "Delete",
    "Link",
    "Mkdir",
    "Mknod",
    "Op",
    "Rename",
    "Restore",
    "SetAttr",
    "Symlink",
    "Update",
    "block_hashes",
    "parse_batch_id",
    "parse_ops",
    "xattr_size",
]

BATCH_ID_MAX = 128
#: Ops one batch may carry: what a client sends at most (its uploader's MAX_OPS),
#: and with `commit.DEPTH_MAX` a bound on what one commit costs the writer.
OPS_MAX = 1000
# Linux PATH_MAX less the NUL: the longest target symlink(2) takes.
SYMLINK_TARGET_MAX = 4095
# st_mode of any file type fits in 16 bits.  The stored mode of a file, dir or
# symlink keeps only the permission bits (S_IMODE) because the type is the
# node's `kind`; accepting the type bits spares clients from masking st_mode.
# A special node keeps its S_IFMT bits: they say FIFO, socket or device.
_MODE_MAX = 0o177777
PERMISSION_BITS = 0o7777
_SPECIAL_TYPES = frozenset({stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK})
_XATTR_NAMESPACE = "user."
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
#: A uid or gid on the wire: 0 to 2**32 - 2 (-1, all ones, means "unchanged" to chown(2)).
_ID_MAX = 2**32 - 2
SYMLINK_MODE = 0o777


def parse_batch_id(value: object) -> str:
    """Return the client's batch id if it is a usable one, else raise `InvalidRequest`."""
    if not isinstance(value, str) or not 1 <= len(value) <= BATCH_ID_MAX or not value.isprintable():
        raise InvalidRequest(f"batch must be a printable string of 1 to {BATCH_ID_MAX} characters")
    return value


def parse_ops(value: object) -> list[Op]:
    """Check a batch's wire ops and return them typed; raise `InvalidRequest` on the first bad one."""
    if not isinstance(value, list) or not value:
        raise InvalidRequest("ops must be a non-empty list")
    if len(value) > OPS_MAX:
        raise InvalidRequest(f"a batch carries at most {OPS_MAX} ops, this one has {len(value)}; split it")
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
        return Mkdir(
            id=f.node_id("id"), parent=f.node_id("parent"), name=f.name("name"), mode=f.mode("mode"),
            mtime_ns=f.int64("mtime_ns"), xattrs=f.new_xattrs(), **f.owners(),
        )  # fmt: skip
    if kind == OP_CREATE:
        size, blocks = f.content()
        return Create(
            id=f.node_id("id"), parent=f.node_id("parent"), name=f.name("name"), mode=f.mode("mode"),
            mtime_ns=f.int64("mtime_ns"), size=size, blocks=blocks, xattrs=f.new_xattrs(), **f.owners(),
        )  # fmt: skip
    if kind == OP_SYMLINK:
        return Symlink(
            id=f.node_id("id"), parent=f.node_id("parent"), name=f.name("name"), target=f.target("target"),
            mtime_ns=f.int64("mtime_ns"), xattrs=f.new_xattrs(), **f.owners(),
        )  # fmt: skip
    if kind == OP_UPDATE:
        size, blocks = f.content()
        return Update(
            id=f.node_id("id"), base=f.seq("base"), size=size, blocks=blocks, mtime_ns=f.int64("mtime_ns"),
            mode=f.optional_mode("mode"),
        )  # fmt: skip
    if kind == OP_MKNOD:
        return Mknod(
            id=f.node_id("id"), parent=f.node_id("parent"), name=f.name("name"), mode=f.special_mode("mode"),
            rdev=f.int64("rdev", 0), mtime_ns=f.int64("mtime_ns"), xattrs=f.new_xattrs(), **f.owners(),
        )  # fmt: skip
    if kind == OP_SETATTR:
        mode, mtime_ns, xattrs = f.optional_mode("mode"), f.optional_int64("mtime_ns"), f.xattrs("xattrs")
        owners = f.owners()
        if mode is None and mtime_ns is None and xattrs is None and not owners:
            raise InvalidRequest(f"op {index}: setattr needs mode, mtime_ns, xattrs, uid or gid")
        return SetAttr(
            id=f.node_id("id"), mode=mode, mtime_ns=mtime_ns, xattrs=xattrs, base=f.optional_seq("base"), **owners
        )
    if kind == OP_RENAME:
        node_id = f.not_root("id", "renamed")
        replace, exchange = f.optional_node_id("replace"), f.optional_node_id("exchange")
        if ROOT_ID in (replace, exchange):
            raise InvalidRequest(f"op {index}: the root can't be replaced or exchanged")
        if replace is not None and exchange is not None:
            raise InvalidRequest(f"op {index}: a rename can't both replace and exchange")
        return Rename(
            id=node_id, parent=f.node_id("parent"), name=f.name("name"), new_parent=f.node_id("new_parent"),
            new_name=f.name("new_name"), replace=replace, exchange=exchange,
        )  # fmt: skip
    if kind == OP_DELETE:
        return Delete(
            id=f.not_root("id", "deleted"), parent=f.node_id("parent"), name=f.name("name"), base=f.optional_seq("base")
        )
    if kind == OP_LINK:
        return Link(id=f.not_root("id", "linked"), parent=f.node_id("parent"), name=f.name("name"))
    if kind == OP_RESTORE:
        return Restore(id=f.not_root("id", "restored"), parent=f.node_id("parent"), name=f.name("name"))
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
        return self.int64(key, 0, _MODE_MAX) & PERMISSION_BITS

    def special_mode(self, key: str) -> int:
        mode = self.int64(key, 0, _MODE_MAX)
        if stat.S_IFMT(mode) not in _SPECIAL_TYPES:
            raise self._fail(key, "must carry the S_IFMT bits of a FIFO, socket or device")
        return mode

    def xattrs(self, key: str) -> dict[str, str | None] | None:
        """Extended attributes to set (base64 values) or remove (None)."""
        value = self._raw.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self._fail(key, "must map names to base64 values or null")
        for name, encoded in value.items():
            valid = isinstance(name, str) and name.startswith(_XATTR_NAMESPACE) and name != _XATTR_NAMESPACE
            if not valid or "\0" in name:
                raise self._fail(key, f"{name!r} is not a user.* attribute name")
            try:
                size = len(name.encode("utf-8"))
            except UnicodeEncodeError:
                raise self._fail(key, f"{name!r} is not valid UTF-8") from None
            if size > XATTR_NAME_MAX:
                raise self._fail(key, f"name {name[:40]!r}... is longer than {XATTR_NAME_MAX} bytes")
            if encoded is None:
                continue
            try:
                length = len(_decode_base64(encoded))
            except ValueError:
                raise self._fail(key, f"the value of {name!r} is not base64") from None
            if length > XATTR_VALUE_MAX:
                raise self._fail(key, f"the value of {name!r} is longer than {XATTR_VALUE_MAX} bytes")
        return dict(value)

    def new_xattrs(self, key: str = "xattrs") -> dict[str, str]:
        """A new node's attributes; a null value (remove) means nothing here."""
        given = self.xattrs(key) or {}
        attrs = {name: value for name, value in given.items() if value is not None}
        if sum(xattr_size(name, value) for name, value in attrs.items()) > XATTR_TOTAL_MAX:
            raise self._fail(key, f"take more than {XATTR_TOTAL_MAX} bytes together")
        return attrs

    def owner_id(self, key: str) -> int | None:
        """A uid or gid: a number, ``"owner"`` (`OWNER`), or None when not given."""
        value = self._raw.get(key)
        if value is None:
            return None
        if value == "owner":
            return OWNER
        return self.int64(key, 0, _ID_MAX)

    def owners(self) -> dict[str, int]:
        """The ``uid`` and ``gid`` given (as `owner_id` reads them), by name."""
        given = {key: self.owner_id(key) for key in ("uid", "gid")}
        return {key: value for key, value in given.items() if value is not None}

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



def xattr_size(name: str, encoded: str) -> int:
    """Bytes an attribute takes: its name plus its value (base64 on the wire)."""
    return len(name.encode("utf-8")) + len(_decode_base64(encoded))


def _decode_base64(encoded: object) -> bytes:
    if not isinstance(encoded, str):
        raise ValueError("not a string")
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None
