"""Read-only, content-addressed copies of registered dictionary sets, which workers memory-map.

A lazily loaded dictionary set (``load_dictionary_set(lazy=True)``, ``formats/lazy.py``) reads its matrices from
the files while it computes. Mapping the registered files themselves would be unsafe: a file truncated in place
kills the process with SIGBUS on the next page it touches, and a file rewritten in place changes, silently, every
page not yet read. So a worker maps a snapshot instead: the registered files copied once under
``<root>/<content hash>/``, checked against the registered hash after the copy (a source changed during the copy is
refused, never mapped), made read-only, and published by an atomic rename. Nothing writes a published snapshot
again, so the mapping's pages always hold the registered bytes, whatever happens to the registered path later.

Workers of one machine share the snapshots; two that copy the same set at once each copy into their own
``.partial`` directory, and the first rename wins. A snapshot costs the set's size on disk once; the directory is a
cache (delete it with no worker running to reclaim the space).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from workers.pipeline import registry


def snapshot(path: str | Path, content_hash: str, root: Path) -> Path:
    """The read-only copy of the registered directory ``path`` whose content hash is ``content_hash``, made if
    missing (module doc). RegisteredFilesChanged when its files no longer hash to ``content_hash``."""
    final = root / content_hash
    if final.is_dir():
        return final
    source = Path(path)
    partial = root / f".{content_hash}.{uuid.uuid4().hex}.partial"
    partial.mkdir(parents=True)
    try:
        for f in registry.files_of(source):
            dest = partial / f.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
        if registry.content_hash(partial) != content_hash:
            raise registry.RegisteredFilesChanged(
                f"{source} changed since registration (or while it was being copied); re-register it")
        for f in registry.files_of(partial):
            f.chmod(0o444)
        try:
            os.rename(partial, final)  # atomic; fails if another worker published first
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return final

