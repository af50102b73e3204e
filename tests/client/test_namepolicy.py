"""The name policy: reversible aliases under Windows and macOS rules, with no two names meeting."""

from __future__ import annotations

import random
import unicodedata

import pytest

from websync_fs.folder.probe import longest
from websync_fs.namepolicy import (
    ESCAPE, LINUX, MACOS, WINDOWS, Aliases, Rules, allowed, assign, canonical, decode, encode, fits, fold,
)

pytestmark = pytest.mark.timeout(60)

#: Characters that make names hard: every forbidden one, their look-alikes, the quote, dots, spaces.
_HARD = '<>:"\\|?*\x01\x1f./ ' + "：＜＞＂＼｜？＊␁␟．␠‛ＮＬ１" + "CONPRULXMT" + "conprulxmt" + "1239" + "éeE\u0301ßaA"


def _random_name(rng: random.Random) -> str:
    n = rng.choice([1, 2, 3, 4, 5, 8, 12])
    name = "".join(rng.choice(_HARD) for _ in range(n)).replace("/", "")
    if rng.random() < 0.2:
        name = rng.choice(["CON", "nul", "Com1", "LPT9", "aux"]) + rng.choice(["", ".txt", ".", " ", ".tar.gz", "．"])
    return name if name not in ("", ".", "..") else "x"


@pytest.mark.parametrize("rules", [WINDOWS, MACOS, LINUX], ids=["windows", "macos", "linux"])
def test_every_name_comes_back_and_no_two_meet(rules: object) -> None:
    rng = random.Random(19)
    seen: dict[str, str] = {}
    for _ in range(20_000):
        name = _random_name(rng)
        alias = encode(name, rules)  # type: ignore[arg-type]
        assert decode(alias, rules) == name, (name, alias)  # type: ignore[arg-type]
        assert canonical(alias, rules)  # type: ignore[arg-type]
        assert seen.setdefault(alias, name) == name, f"{name!r} and {seen[alias]!r} share {alias!r}"
        if fits(name, rules):  # type: ignore[arg-type]
            assert allowed(alias, rules), (name, alias)  # type: ignore[arg-type]


def test_windows_aliases_are_the_look_alikes() -> None:
    assert encode("a:b", WINDOWS) == "a：b"
    assert encode('<>"\\|?*', WINDOWS) == "＜＞＂＼｜？＊"
    assert encode("bell\x07", WINDOWS) == "bell␇"
    assert encode("CON", WINDOWS) == "COＮ" and encode("com1.tar.gz", WINDOWS) == "com１.tar.gz"
    assert encode("trail.", WINDOWS) == "trail．" and encode("trail ", WINDOWS) == "trail␠"
    assert encode("CONSOLE.txt", WINDOWS) == "CONSOLE.txt"  # only the device names themselves
    assert encode("a.b c", WINDOWS) == "a.b c"


def test_a_real_look_alike_is_quoted_so_it_never_meets_an_alias() -> None:
    assert encode("a：b", WINDOWS) == "a" + ESCAPE + "：b" != encode("a:b", WINDOWS)
    assert encode("x．", WINDOWS) == "x‛．" != encode("x.", WINDOWS)
    assert encode("COＮ", WINDOWS) == "CO‛Ｎ" != encode("CON", WINDOWS)
    # A look-alike where no alias puts one is left alone: Japanese text stays as it is.
    assert encode("第１章．txt", WINDOWS) == "第１章．txt"
    # Names made on the local disk come back as the names they look like.
    assert decode("a：b", WINDOWS) == "a:b" and decode("‛x", WINDOWS) == "‛x"
    assert not canonical("‛‛x", WINDOWS)  # no name encodes to it: left alone, never guessed


def test_macos_folds_case_and_normalisation_but_keeps_every_character() -> None:
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert encode("a:b", MACOS) == "a:b" and encode("trail.", MACOS) == "trail."
    assert fold(nfc, MACOS) == fold(nfd, MACOS) and fold(nfc, WINDOWS) != fold(nfd, WINDOWS)
    names = assign([(nfc, 2), (nfd, 1)], MACOS)
    assert names[nfd] == nfd and names[nfc] == "café (case conflict)"


def test_a_case_pair_is_both_kept_and_the_first_known_keeps_its_name() -> None:
    names = assign([("Readme.md", 7), ("README.md", 3)], WINDOWS)
    assert names == {"README.md": "README.md", "Readme.md": "Readme (case conflict).md"}
    # The name shown keeps it while the pair lasts, whoever came first; alone, each is itself again.
    shown = {"Readme.md": "Readme.md", "README.md": "README (case conflict).md"}
    assert assign([("Readme.md", 7), ("README.md", 3)], WINDOWS, previous=shown.get) == shown
    assert assign([("Readme.md", 7)], WINDOWS, previous=lambda n: names[n]) == {"Readme.md": "Readme.md"}
    # A real name that looks like the marked one is not taken from it.
    three = assign([("Readme.md", 7), ("README.md", 3), ("readme (case conflict).md", 9)], WINDOWS)
    assert len({fold(a, WINDOWS) for a in three.values()}) == 3


def test_a_directory_of_random_names_never_folds_two_into_one() -> None:
    rng = random.Random(7)
    for rules in (WINDOWS, MACOS):
        for _ in range(300):
            children = [(name, rng.randrange(1000)) for name in {_random_name(rng) for _ in range(rng.randrange(1, 30))}]
            names = assign(children, rules)
            assert set(names) == {n for n, _ in children}
            assert len({fold(a, rules) for a in names.values()}) == len(names)
            assert all(allowed(a, rules) for a in names.values())
            assert assign(list(reversed(children)), rules) == names  # the order given does not matter


def test_a_too_long_name_gets_a_short_alias_that_the_directory_maps_back() -> None:
    long = "é" * 300 + ".txt"
    names = assign([(long, 1), ("é" * 260 + ".txt", 2)], WINDOWS)
    assert all(fits(a, WINDOWS) and a.endswith(".txt") for a in names.values())
    assert len(set(names.values())) == 2
    tree = Aliases(WINDOWS)
    tree.add_directory("", [("dir:1", 1)])
    tree.add_directory("dir:1", [(long, 2), ("CON", 3)])
    local = tree.local(f"dir:1/{long}")
    assert local.startswith("dir：1/") and tree.remote(local) == f"dir:1/{long}"
    assert tree.remote("dir：1/COＮ") == "dir:1/CON"
    # Spelled as the folder lists it (lowntfs-3g lists in lower case), found as the map spells it.
    assert tree.same("DIR：1/coｎ") == "dir：1/COＮ" and tree.same("DIR：1/New") == "dir：1/New"
    assert tree.remote(tree.same("DIR：1/new:file?")) == "dir:1/new:file?"
    assert tree.aliased()["dir：1"] == "dir:1"


def test_a_smaller_byte_limit_makes_the_rules_strict_and_every_long_name_short() -> None:
    ecryptfs = Rules(max_bytes=143)  # eCryptfs: 143 bytes, everything else as ext4
    assert ecryptfs.strict and not Rules(max_bytes=255).strict
    long = "report of the year " * 12 + ".pdf"  # 232 bytes: the server keeps it, this disk cannot
    twin = "report of the year " * 12 + "!.pdf"
    tree = Aliases(ecryptfs)
    names = tree.add_directory("", [(long, 1), (twin, 2), ("short.pdf", 3)])
    assert names["short.pdf"] == "short.pdf"
    for name in (long, twin):
        alias = names[name]
        assert len(alias.encode()) <= 143 and alias.endswith(".pdf") and "~" in alias
        assert alias.startswith("report of the year ")  # readable: the start of the original
        assert tree.remote(alias) == name and tree.local(name) == alias
    assert names[long] != names[twin]
    # The same name is shortened the same way on every machine and at every start.
    assert Aliases(ecryptfs).add_directory("", [(long, 9)])[long] == names[long]


def test_a_marked_twin_over_the_limit_is_shortened_and_kept_apart() -> None:
    base = "x" * 246 + ".md"  # 249 bytes: the name fits, " (case conflict)" would not
    names = assign([(base, 1), (base.upper().replace(".MD", ".md"), 2)], WINDOWS)
    assert names[base] == base
    marked = names[base.upper().replace(".MD", ".md")]
    assert fits(marked, WINDOWS) and fold(marked, WINDOWS) != fold(base, WINDOWS)
    lowntfs = Rules(WINDOWS.forbidden, WINDOWS.trailing, devices=True, fold_case=True)  # 255 bytes: Linux's VFS
    colons = ":" * 100 + ".txt"  # 104 bytes here, 304 as look-alikes
    alias = assign([(colons, 1)], lowntfs)[colons]
    assert fits(alias, lowntfs) and alias.startswith("：") and alias.endswith(".txt")
    assert assign([(colons, 1)], WINDOWS)[colons] == encode(colons, WINDOWS)  # 104 UTF-16 units: fits NTFS


def test_macos_shortens_an_nfc_nfd_pair_near_the_limit_without_losing_either() -> None:
    nfc = unicodedata.normalize("NFC", "é" * 120 + ".txt")  # 244 bytes
    nfd = unicodedata.normalize("NFD", nfc)  # 364 bytes: longer than APFS takes
    tree = Aliases(MACOS)
    names = tree.add_directory("", [(nfc, 1), (nfd[:170] + ".txt", 2)])
    assert names[nfc] == nfc
    assert all(fits(a, MACOS) for a in names.values())
    assert len({fold(a, MACOS) for a in names.values()}) == 2
    assert {tree.remote(a) for a in names.values()} == set(names)


def test_the_probe_halves_its_way_to_the_length_limit() -> None:
    for limit in (0, 1, 143, 255, 1020):
        tries: list[int] = []
        assert longest(lambda n: tries.append(n) is None and n <= limit) == limit
        assert len(tries) <= 11
