"""The corpus' sources: English text shipped in Debian packages, each read into plain-text documents.

| source | package | what a document is |
| --- | --- | --- |
| ``fortunes`` | fortunes-min | one fortune (quotations, riddles, literature), between ``%`` lines |
| ``debian-reference`` | debian-reference-en | one paragraph of the Debian Reference (its plain-text edition) |
| ``gcide`` | dict-gcide | one entry of the GNU Collaborative International Dictionary of English (Webster's 1913 + WordNet) |
| ``wordnet`` | dict-wn | one WordNet 3.0 entry: glosses and example sentences |

Readers yield documents in the files' own order, so a build is deterministic for given package versions.
Nothing is downloaded: a missing package is an error that names it.
"""

from __future__ import annotations

import gzip
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
DEBIAN_REFERENCE_TXT = Path("/usr/share/debian-reference/debian-reference.en.txt.gz")
DICTD_DIR = Path("/usr/share/dictd")

# dictd index offsets and lengths are base-64 numbers in this alphabet (dictd's own, not RFC 4648's order).
_DICTD_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
_SPACES = re.compile(r"\s+")


class MissingSource(RuntimeError):
    """A source's Debian package is not installed (the message says how to install it)."""


@dataclass(frozen=True)
class Source:
    name: str
    package: str
    files: Callable[[], list[Path]]  # the files it reads (their hashes are part of the build key)
    documents: Callable[[], Iterator[str]]


def _require(package: str, paths: list[Path]) -> list[Path]:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise MissingSource(f"source package {package} is not installed ({missing[0]} is missing): "
                            f"apt-get install -y {package}  (scripts/dev setup installs it)")
    return paths


def squash(text: str) -> str:
    """Whitespace runs to one space, ends stripped: dictionary and fortune layouts carry no meaning in it."""
    return _SPACES.sub(" ", text).strip()


def _fortune_files() -> list[Path]:
    files = sorted(p for p in FORTUNES_DIR.glob("*") if p.is_file() and p.suffix != ".dat" and not p.is_symlink())
    return _require("fortunes-min", files or [FORTUNES_DIR / "fortunes"])


def fortunes() -> Iterator[str]:
    for path in _fortune_files():
        for chunk in re.split(r"^%\s*$", path.read_text(encoding="utf-8", errors="replace"), flags=re.MULTILINE):
            if text := squash(chunk):
                yield text


def debian_reference() -> Iterator[str]:
    (path,) = _require("debian-reference-en", [DEBIAN_REFERENCE_TXT])
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        for para in re.split(r"\n\s*\n", f.read()):
            text = squash(para)
            # Prose only: tables of contents, command listings and rules are mostly digits and symbols.
            if len(text) >= 80 and sum(c.isalpha() or c == " " for c in text) >= 0.8 * len(text):
                yield text


def _dictd_number(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _DICTD_B64[c]
    return n


def _dictd_files(name: str, package: str) -> list[Path]:
    return _require(package, [DICTD_DIR / f"{name}.index", DICTD_DIR / f"{name}.dict.dz"])


def dictd_entries(name: str, package: str) -> Iterator[str]:
    """The entries of a dictd database, in index order; each entry once (several headwords share one)."""
    index, dz = _dictd_files(name, package)
    data = gzip.open(dz).read()  # dictzip is gzip with a random-access table in an extra field
    seen: set[int] = set()
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        head, offset, length = line.split("\t")[:3]
        start = _dictd_number(offset)
        if head.startswith("00-database") or start in seen:
            continue
        seen.add(start)
        if text := squash(data[start:start + _dictd_number(length)].decode("utf-8", errors="replace")):
            yield text


def _package_version(package: str) -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source("fortunes", "fortunes-min", _fortune_files, fortunes),
        Source("debian-reference", "debian-reference-en", lambda: _require("debian-reference-en",
                                                                             [DEBIAN_REFERENCE_TXT]),
               debian_reference),
        Source("gcide", "dict-gcide", lambda: _dictd_files("gcide", "dict-gcide"),
               lambda: dictd_entries("gcide", "dict-gcide")),
        Source("wordnet", "dict-wn", lambda: _dictd_files("wn", "dict-wn"), lambda: dictd_entries("wn", "dict-wn")),
    ]
}


def package_version(source: Source) -> str:
    return _package_version(source.package)
