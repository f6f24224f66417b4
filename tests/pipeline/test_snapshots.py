"""Workers map dictionary sets lazily from read-only, content-addressed snapshots (workers/pipeline/snapshots.py):
graphs equal the eagerly loaded set's, and a registered file rewritten or truncated in place under a running
computation changes nothing, where mapping the registered file itself dies with SIGBUS."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from workers.dictionaries.formats.lazy import is_mapped
from workers.engine.attribution import AttributionSettings, build_graph
from workers.engine.targets import top_logits
from workers.pipeline import registry
from workers.pipeline.compute import ModelCache
from workers.pipeline.snapshots import snapshot


@pytest.fixture
def copied(neo4j_driver, tiny_model, unique_id, tmp_path, settings):  # noqa: ANN001, ANN201
    """(model, dictionary set, its directory): the tiny model's dictionaries copied and registered."""
    model_dir, dict_dir = tiny_model
    copy = tmp_path / "dicts"
    shutil.copytree(dict_dir, copy)
    model = registry.register_model(neo4j_driver, f"{unique_id}-m", model_dir, settings.neo4j_database)
    dset = registry.register_dictionary_set(neo4j_driver, f"{unique_id}-d", copy, model.model_id,
                                            settings.neo4j_database)
    return model, dset, copy


def _graph(lin):  # noqa: ANN001, ANN202
    tr = lin.trace(torch.tensor([1, 5, 9, 14, 3, 7]))
    return build_graph(lin, tr, top_logits(lin, tr, max_n_logits=2), AttributionSettings(batch_size=8))


def test_snapshot_is_a_read_only_copy_with_the_registered_hash(copied, tmp_path):
    _, dset, copy = copied
    root = tmp_path / "snapshots"
    snap = snapshot(copy, dset.content_hash, root)
    assert snap == root / dset.content_hash
    assert registry.content_hash(snap) == dset.content_hash
    files = registry.files_of(snap)
    assert [f.relative_to(snap) for f in files] == [f.relative_to(copy) for f in registry.files_of(copy)]
    assert all(f.stat().st_mode & 0o222 == 0 for f in files)  # nobody's write bit
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert snapshot(copy, dset.content_hash, root) == snap  # published once, reused
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert [p.name for p in root.iterdir()] == [dset.content_hash]  # no partial copy left behind


def test_a_set_changed_since_registration_is_refused_and_nothing_is_published(copied, tmp_path):
    _, dset, copy = copied
    weights = next(copy.rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    root = tmp_path / "snapshots"
    with pytest.raises(registry.RegisteredFilesChanged, match="changed since registration"):
        snapshot(copy, dset.content_hash, root)
    assert list(root.iterdir()) == []


def test_worker_cache_maps_snapshots_and_survives_the_registered_files_being_truncated(copied, tmp_path):
    model, dset, copy = copied
    eager = ModelCache().get(model, dset).lin
    loaded = ModelCache(snapshots=tmp_path / "snapshots").get(model, dset)
    assert all(is_mapped(d.W_dec) and is_mapped(d.W_enc) for _, d in loaded.lin.dictionaries)
    assert not any(is_mapped(d.W_dec) for _, d in eager.dictionaries)
    g_eager = _graph(eager)
    for f in registry.files_of(copy):  # rewritten in place: truncated, then filled with other bytes
        size = f.stat().st_size
        with f.open("r+b") as fh:
            fh.truncate(0)
            fh.write(os.urandom(size // 2))
    g_lazy = _graph(loaded.lin)  # the loaded set keeps computing from its snapshot
    assert g_lazy.node_ids == g_eager.node_ids
    torch.testing.assert_close(g_lazy.adjacency.to_dense(), g_eager.adjacency.to_dense(), rtol=0, atol=0)


def test_mapping_the_registered_files_themselves_would_die_when_they_are_truncated(tiny_model, tmp_path):
    """Why snapshots exist: the same truncation under a mapping of the registered files kills the process."""
    _, dict_dir = tiny_model
    copy = tmp_path / "dicts"
    shutil.copytree(dict_dir, copy)
    script = textwrap.dedent(f"""
        import pathlib, torch
        from workers.dictionaries.formats import load_dictionary_set
        ds = load_dictionary_set(pathlib.Path({str(copy)!r}), lazy=True)
        for f in pathlib.Path({str(copy)!r}).rglob("*.safetensors"):
            f.open("r+b").truncate(0)
        print(sum(float(d.W_dec.sum()) for _, d in ds))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stderr[-500:])
