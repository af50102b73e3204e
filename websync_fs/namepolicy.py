"""Names every system accepts: a server name shown under a reversible local alias where it must be.

The server keeps any name Linux keeps (all but ``/`` and NUL).  A front end
whose file system has stricter `Rules` (Windows: forbidden characters, a
trailing dot or space, device names, case folding, 255 UTF-16 units; macOS:
case and normalisation folding) shows such a name under an alias, and turns
the alias back into the original for the core.  The rules here are pure: no
I/O; a front end learns its `Rules` by probing (``folder/probe.py``) or by
knowing its platform.

Encoding of one name (`encode`; `decode` is its inverse)::

    forbidden character   < > : " \\ | ? *  ->  ＜ ＞ ： ＂ ＼ ｜ ？ ＊ (full-width look-alikes)
    control character     U+0001..U+001F    ->  U+2401..U+241F (control pictures)
    trailing dot / space  "x." / "x "       ->  "x．" / "x␠" (only the last character)
    device name           CON, con.txt ...  ->  COＮ, coｎ.txt (the stem's last character full-width)
    a look-alike that is really in the name ->  ‛ before it (U+201B, as rclone quotes)
    a real ‛ before a look-alike or a ‛      ->  ‛‛

so ``decode(encode(x)) == x`` for every name and `encode` is injective: a
real ``a：b`` is shown as ``a‛：b``, never as the alias of ``a:b``.  A look-alike
at a place where no alias puts one (a ``．`` inside a name) stays as it is.  A
local name that no original encodes to (``‛‛x``) is not `canonical`: the front
end leaves it alone and says so, rather than guess.

Names that only the whole directory can settle (`assign`): two originals the
local system folds into one (``Readme.md`` and ``README.md`` where case does
not count, NFC and NFD ``é`` on macOS) are both shown, one under its own name
and the other as ``README (case conflict).md``; the one already shown under
its name, else the one this machine knew first (the lower local inode),
keeps the plain name, so the choice is stable; once alone, a marked name is
shown as itself again.  A name longer than the
system allows is shortened to a prefix, ``~`` and eight hex digits of its hash,
keeping its extension.  Both are undone by the directory's listing, not by
the name alone (see `Aliases`).
"""

from __future__ import annotations

import functools
import hashlib
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from websync_server.protocol import NAME_MAX  # the server's limit: a local one as long needs no alias

ESCAPE = "\u201b"  # ‛ SINGLE HIGH-REVERSED-9 QUOTATION MARK, rclone's quote

#: Characters Windows refuses in a name, and their full-width look-alikes.
WINDOWS_FORBIDDEN = '<>:"\\|?*' + "".join(chr(c) for c in range(1, 32))
_LOOKALIKE = {c: chr(ord(c) + 0xFEE0) for c in '<>:"\\|?*/'} | {chr(c): chr(0x2400 + c) for c in range(1, 32)}
_TRAILING = {".": "\uff0e", " ": "\u2420"}  # ．FULLWIDTH FULL STOP, ␠ SYMBOL FOR SPACE
DEVICES = frozenset(["CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))])
_DEVICE_CHARS = {c: chr(ord(c) + 0xFEE0) for c in "".join(DEVICES)} | {
    c.lower(): chr(ord(c.lower()) + 0xFEE0) for c in "".join(DEVICES) if c.isalpha()}
_UNLOOK = {v: k for k, v in _LOOKALIKE.items()}
_UNTRAIL = {v: k for k, v in _TRAILING.items()}
_UNDEVICE = {v: k for k, v in _DEVICE_CHARS.items()}
CASE_CONFLICT = "case conflict"


@dataclass(frozen=True)
class Rules:
    """What a local file system refuses or folds, as a front end found out or knows."""

    forbidden: frozenset[str] = frozenset()
    trailing: frozenset[str] = frozenset()
    devices: bool = False
    fold_case: bool = False
    fold_normalisation: bool = False
    max_bytes: int = NAME_MAX  # UTF-8 bytes of one name
    max_units: int | None = None  # UTF-16 code units of one name (NTFS counts these)

    @property
    def strict(self) -> bool:
        """False where every server name is also a local name (then aliases are the names)."""
        return bool(self.forbidden or self.trailing or self.devices or self.fold_case
                    or self.fold_normalisation or self.max_units is not None or self.max_bytes < NAME_MAX)


LINUX = Rules()
WINDOWS = Rules(frozenset(WINDOWS_FORBIDDEN), frozenset(". "), devices=True, fold_case=True,
                max_bytes=1020, max_units=255)
MACOS = Rules(fold_case=True, fold_normalisation=True)


# -- one name ------------------------------------------------------------------------
def _stem(name: str) -> str:
    return name.split(".", 1)[0]


def _is_device(name: str) -> bool:
    return _stem(name).upper() in DEVICES


@functools.lru_cache(maxsize=8)
def _specials(rules: Rules) -> frozenset[str]:
    """The characters an alias under *rules* may carry with a meaning: a ‛ before one of them quotes it."""
    found = {_LOOKALIKE[c] for c in rules.forbidden if c in _LOOKALIKE}
    found |= {_TRAILING[c] for c in rules.trailing if c in _TRAILING}
    if rules.devices:
        found |= set(_UNDEVICE)
    return frozenset(found | {ESCAPE}) if found else frozenset()


def _device_char(name: str, stem: int) -> bool:
    """True if *name*'s stem ends in a full-width character that marks a device name."""
    c = name[stem - 1]
    return c in _UNDEVICE and _is_device(name[:stem - 1] + _UNDEVICE[c])


@functools.lru_cache(maxsize=8)
def _triggers(rules: Rules) -> frozenset[str]:
    """The characters without which `encode` leaves a name (no trailing or device name) as it is."""
    return frozenset(rules.forbidden) | _specials(rules)


def encode(name: str, rules: Rules) -> str:
    """The local form of server *name* under *rules* (length and folding aside: see `assign`)."""
    specials = _specials(rules)
    if not specials or name in (".", ".."):
        return name
    if _triggers(rules).isdisjoint(name) and name[-1:] not in rules.trailing and not (
            rules.devices and _is_device(name)):
        return name  # most names: one pass in C instead of the loop below
    pieces: list[str] = []
    for c in name:
        if c in rules.forbidden:
            pieces.append(_LOOKALIKE[c])
        elif c in _UNLOOK and _UNLOOK[c] in rules.forbidden:
            pieces.append(ESCAPE + c)  # a real look-alike: quoted, or it would decode
        else:
            pieces.append(c)
    last = name[-1:]
    if last in rules.trailing:
        pieces[-1] = _TRAILING[last]
    elif last in _UNTRAIL and _UNTRAIL[last] in rules.trailing:
        pieces[-1] = ESCAPE + last
    stem = len(_stem(name))
    if rules.devices and stem:
        if _is_device(name):
            pieces[stem - 1] = _DEVICE_CHARS[name[stem - 1]]
        elif _device_char(name, stem):
            pieces[stem - 1] = ESCAPE + name[stem - 1]
    # A real ‛ is doubled only where it would otherwise quote what follows it.
    out = ""
    for i in range(len(name) - 1, -1, -1):
        piece = pieces[i]
        if name[i] == ESCAPE and out[:1] in specials:
            piece = ESCAPE + ESCAPE
        out = piece + out
    return out


def decode(alias: str, rules: Rules) -> str:
    """The server name that *alias* stands for (the inverse of `encode` on everything it returns)."""
    specials = _specials(rules)
    if not specials or alias in (".", ".."):
        return alias
    chars: list[str] = []
    plain: list[bool] = []  # False: quoted or decoded already, taken as it is
    i = 0
    while i < len(alias):
        c = alias[i]
        if c == ESCAPE and alias[i + 1:i + 2] in specials:
            chars.append(alias[i + 1])
            plain.append(False)
            i += 2
        elif c in _UNLOOK and _UNLOOK[c] in rules.forbidden:
            chars.append(_UNLOOK[c])
            plain.append(False)
            i += 1
        else:
            chars.append(c)
            plain.append(True)
            i += 1
    if chars and plain[-1] and chars[-1] in _UNTRAIL and _UNTRAIL[chars[-1]] in rules.trailing:
        chars[-1] = _UNTRAIL[chars[-1]]
    if rules.devices:
        name = "".join(chars)
        stem = len(_stem(name))
        if stem and plain[stem - 1] and _device_char(name, stem):
            chars[stem - 1] = _UNDEVICE[chars[stem - 1]]
    return "".join(chars)


def canonical(alias: str, rules: Rules) -> bool:
    """True if *alias* is what its own original encodes to (a name the front end can sync)."""
    return encode(decode(alias, rules), rules) == alias


def allowed(name: str, rules: Rules) -> bool:
    """True if the local system under *rules* takes *name* as it is."""
    if any(c in rules.forbidden for c in name):
        return False
    if name and name[-1] in rules.trailing:
        return False
    if rules.devices and _is_device(name):
        return False
    return fits(name, rules)


def fits(name: str, rules: Rules) -> bool:
    """True if *name* is within the local system's length limit (bytes, and UTF-16 units where counted)."""
    if len(name.encode("utf-8", "surrogatepass")) > rules.max_bytes:
        return False
    return rules.max_units is None or len(name.encode("utf-16-le", "surrogatepass")) // 2 <= rules.max_units


def fold(name: str, rules: Rules) -> str:
    """The key under which the local system finds *name*: equal keys are one file there."""
    if name.isascii():  # NFD leaves ASCII alone, and its upper case is one character to one
        return name.upper() if rules.fold_case else name
    if rules.fold_normalisation:
        name = unicodedata.normalize("NFD", name)
    if rules.fold_case:
        # One character to one, as NTFS's upcase table and APFS fold (not str.upper's "ß" -> "SS").
        name = "".join(u if len(u := c.upper()) == 1 else c for c in name)
    return name


def shortened(alias: str, original: str, rules: Rules, salt: int = 0) -> str:
    """*alias* cut to fit, marked with a hash of *original* so that it never meets another's."""
    digest = hashlib.sha256(f"{salt}:{original}".encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stem, dot, ext = alias.rpartition(".")
    if not dot or not stem or len(ext) > 16:
        stem, ext = alias, ""
    tail = f"~{digest}" + (f".{ext}" if ext else "")
    while stem and not fits(stem + tail, rules):
        stem = stem[:-1]
    if stem and stem[-1] in rules.trailing:
        stem = stem.rstrip("".join(rules.trailing)) or "_"
    return stem + tail


def conflict_alias(alias: str, k: int) -> str:
    """``Readme (case conflict).md``, ``Readme (case conflict 2).md``, ...: kept beside the plain name."""
    stem, dot, ext = alias.rpartition(".")
    if not dot or not stem:
        stem, ext = alias, ""
    mark = CASE_CONFLICT if k == 1 else f"{CASE_CONFLICT} {k}"
    return f"{stem} ({mark})" + (f".{ext}" if ext else "")


# -- one directory ---------------------------------------------------------------------
def alias_of(name: str, rules: Rules) -> str:
    """The local name of *name* where nothing in its directory folds together with it (see `assign`)."""
    alias = encode(name, rules)
    return alias if fits(alias, rules) else shortened(alias, name, rules)


def assign(children: Iterable[tuple[str, int]], rules: Rules,
           previous: Callable[[str], str | None] = lambda name: None) -> dict[str, str]:
    """Local name of each child ``(server name, local order)`` of one directory, none folding into another.

    *order* ranks who keeps a plain name when two fold into one (this
    machine's inode: the one known first); *previous(name)* is the local name
    a child had when last synced, which it keeps while the collision lasts
    (asked only then).  Once alone, a name is shown as itself again.
    """
    children = list(children)
    wanted: dict[str, str] = {}
    for name, _ in children:
        wanted[name] = alias_of(name, rules)
    result: dict[str, str] = {}
    taken: set[str] = set()
    ordered = sorted(children, key=lambda c: (c[1], c[0]))
    folds = Counter(fold(a, rules) for a in wanted.values())
    clashing = {k for k, n in folds.items() if n > 1}
    for name, _ in ordered:  # what each showed last time, if it still may
        if fold(wanted[name], rules) not in clashing:
            continue
        before = previous(name)
        if before is not None and before in _choices(wanted[name]) and fold(before, rules) not in taken:
            result[name] = before
            taken.add(fold(before, rules))
    for name, _ in ordered:
        if name not in result and fold(wanted[name], rules) not in taken:
            result[name] = wanted[name]
            taken.add(fold(wanted[name], rules))
    plain = set(folds)
    for name, _ in ordered:
        if name in result:
            continue
        k = 1
        while True:
            alias = conflict_alias(wanted[name], k)
            if not fits(alias, rules):
                alias = shortened(alias, f"{k}:{name}", rules)
            key = fold(alias, rules)
            if key not in taken and key not in plain:
                break
            k += 1
        result[name] = alias
        taken.add(key)
    return result


def _choices(alias: str, most: int = 8) -> set[str]:
    return {alias, *(conflict_alias(alias, k) for k in range(1, most + 1))}


class Aliases:
    """Local path <-> server path for one tree, built a directory at a time from the server's names.

    Paths are '/'-joined and relative ('' is the top).  A local path that the
    map does not know (a file made here, not yet in the core) turns into its
    server path by its parent's mapping and `decode` of its own name.
    """

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self._local: dict[str, str] = {}  # server path -> local path
        self._remote: dict[str, str] = {}  # local path -> server path
        self._folded: dict[str, str] = {}  # fold(local path) -> local path

    def add_directory(self, remote_dir: str, children: list[tuple[str, int]],
                      previous: Callable[[str], str | None] = lambda name: None) -> dict[str, str]:
        """Map the children of *remote_dir*; returns server name -> local name."""
        if not self.rules.strict:
            return {n: n for n, _ in children}  # every name is its own alias: nothing to remember
        local_dir = self.local(remote_dir)
        names = assign(children, self.rules, previous)
        for name, alias in names.items():
            remote = f"{remote_dir}/{name}" if remote_dir else name
            local = f"{local_dir}/{alias}" if local_dir else alias
            self._local[remote], self._remote[local] = local, remote
            if self.folds:
                self._folded[fold(local, self.rules)] = local
        return names

    def local(self, remote: str) -> str:
        """The local path of server path *remote* (mapped, else encoded name by name)."""
        return self._mapped(remote, self._local, encode)

    def remote(self, local: str) -> str:
        """The server path of local path *local*, spelled as the map spells it (see `same`)."""
        return self._mapped(local, self._remote, decode)

    def _mapped(self, path: str, table: dict[str, str], convert: Callable[[str, Rules], str]) -> str:
        """*path* through *table*, else its folder's mapping and *convert* of its last name."""
        if not path or not self.rules.strict:
            return path
        found = table.get(path)
        if found is not None:
            return found
        head, _, name = path.rpartition("/")
        last = convert(name, self.rules)
        return f"{self._mapped(head, table, convert)}/{last}" if head else last

    @property
    def folds(self) -> bool:
        return self.rules.fold_case or self.rules.fold_normalisation

    def same(self, local: str) -> str:
        """*local* spelled as the map spells it where the local system folds (``readme`` -> ``Readme``).

        Folder by folder: a new file in a known folder takes the folder's spelling and keeps its own.
        """
        if not self._folded or not local:
            return local
        out = ""
        for part in local.split("/"):
            sub = f"{out}/{part}" if out else part
            out = self._folded.get(fold(sub, self.rules), sub)
        return out

    def aliased(self) -> dict[str, str]:
        """Every local path that differs from its server path: local -> server."""
        return {local: remote for local, remote in self._remote.items() if local != remote}
