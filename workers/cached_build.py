"""Artefacts built once per content key and cached: ``<root>/<key>/`` is complete when it holds the zoo's marker
file. The build writes into ``<root>/<key>.partial`` under an inter-process lock, and the directory is renamed into
place only when the build returned, so a reader never sees half an artefact and two processes never build the same
key at once (used by the zoo's cross-layer transcoder and the Gemma dictionary slice; the zoo itself predates it)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from workers.zoo.build import MARKER, _exclusive


def build_once(root: Path, key: str, build: Callable[[Path], object], resume: bool = False) -> Path:
    """``root / key``, calling ``build(partial_dir)`` first if no complete artefact has that key. ``resume``: keep
    what a killed build of this key left in ``<key>.partial`` (a build that checkpoints there resumes from it);
    otherwise the partial directory starts empty."""
    out = root / key
    if (out / MARKER).is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / f"{key}.lock"):
        if (out / MARKER).is_file():  # built by another process while this one waited
            return out
        partial = root / f"{key}.partial"
        if not resume:
            shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True, exist_ok=True)
        build(partial)
        (partial / MARKER).write_text(key + "\n")
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    return out
