"""The native dictionary-set format (what ``save_dictionary_set`` writes).

One directory per dictionary set::

    <set>/dictionaries.json        index
    <set>/<name>.json              one dictionary's config (DictionaryConfig fields)
    <set>/<name>.safetensors       its tensors, canonical orientation, float32
    <set>/<name>.report.json|png   optional training report (written by training, ignored by the reader)

``dictionaries.json``::

    {"format": "circuit-atlas-dictionaries", "version": 1,
     "model_name": "zoo/gpt2-4l", "model_hash": "<sha256 or empty>",
     "content_hash": "<sha256 over all members>",
     "entries": [{"name": "L0.attn", "layer": 0, "site": "attn", "kind": "sae",
                  "config": "L0.attn.json", "weights": "L0.attn.safetensors",
                  "content_hash": "<sha256>"}, ...]}

``<name>.json`` holds ``kind`` ("sae" | "transcoder"), ``site`` ("attn" | "mlp"), ``layer``, ``d_in``,
``d_out``, ``d_dict``, ``activation`` ("relu" | "jumprelu" | "topk"), ``k`` (TopK), ``topk_signed``,
``skip``, ``name`` and ``extra`` (provenance). ``<name>.safetensors`` holds, rows = features:
``W_enc`` [d_dict, d_in], ``b_enc`` [d_dict], ``W_dec`` [d_dict, d_out], ``b_dec`` [d_out], and
``threshold`` [d_dict] (JumpReLU) and ``W_skip`` [d_out, d_in] (skip) when present. The function is
``x̂ = (pre ⊙ gate(pre)) @ W_dec + b_dec (+ x @ W_skip.T)`` with ``pre = x @ W_enc.T + b_enc``: an SAE
reads and rewrites the attention output of its layer; a transcoder reads the MLP module's input (after
the pre-MLP norm) and rewrites the MLP output.

A cross-layer transcoder (``workers.dictionaries.crosslayer``) is one more entry, and the index is then
version 2 (older readers refuse it rather than drop the CLT)::

    {"name": "clt", "kind": "clt", "config": "clt.json",
     "weights": ["clt.L0.safetensors", ..., "clt.L{L−1}.safetensors"], "content_hash": "<sha256>"}

``clt.json`` holds the ``CLTConfig`` fields (``n_layers``, ``d_model``, ``d_dict``, ``activation``, ``k``,
``input_site`` "resid_mid" | "mlp_in", ``name``, ``extra``); ``clt.L{i}.safetensors`` holds source layer
i: ``W_enc`` [d_dict, d_model], ``b_enc`` [d_dict], ``W_dec`` [d_dict, L − i, d_model] (writes to layers
i..L−1), ``b_dec`` [d_model] (the bias of output layer i) and ``threshold`` [d_dict] (JumpReLU).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from safetensors.torch import save_file

from workers.dictionaries.crosslayer.module import CLTConfig, CLTDictionarySet, CrossLayerTranscoder, clt_of
from workers.dictionaries.formats.lazy import lazy_clt, lazy_dictionary, map_safetensors
from workers.dictionaries.formats.tensors_io import need, read_json, read_safetensors
from workers.dictionaries.modules import Dictionary, DictionaryConfig, DictionarySet

INDEX = "dictionaries.json"
FORMAT = "circuit-atlas-dictionaries"
VERSION = 2  # 2: a cross-layer transcoder entry; sets without one are still written as version 1


def save_native(ds: DictionarySet, out_dir: Path) -> Path:
    """Write ``ds`` to ``out_dir`` (created if needed; files of the same names are replaced)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = [_write_dictionary(d, out_dir) for _, d in ds]
    clt = clt_of(ds)
    if clt is not None:
        name = clt.cfg.name
        (out_dir / f"{name}.json").write_text(json.dumps(clt.cfg.to_dict(), indent=2, sort_keys=True))
        weights = []
        for i in range(clt.n_layers):
            save_file(clt.layer_tensors(i), str(out_dir / f"{name}.L{i}.safetensors"))
            weights.append(f"{name}.L{i}.safetensors")
        entries.append({"name": name, "kind": "clt", "config": f"{name}.json", "weights": weights,
                        "content_hash": clt.content_hash()})
    index = {"format": FORMAT, "version": VERSION if clt is not None else 1, "model_name": ds.model_name, "model_hash": ds.model_hash,
             "content_hash": ds.content_hash(), "entries": entries}
    (out_dir / INDEX).write_text(json.dumps(index, indent=2))
    return out_dir


def _write_dictionary(d: Dictionary, out_dir: Path) -> dict:
    """One dictionary's config and weights; returns its index entry."""
    name = d.cfg.name
    (out_dir / f"{name}.json").write_text(json.dumps(d.cfg.to_dict(), indent=2, sort_keys=True))
    save_file(d.tensors(), str(out_dir / f"{name}.safetensors"))
    return {"name": name, "layer": d.cfg.layer, "site": d.cfg.site, "kind": d.cfg.kind, "config": f"{name}.json",
            "weights": f"{name}.safetensors", "content_hash": d.content_hash()}


class _Hashed:
    """A member's content hash standing in for the member (``DictionarySet.content_hash`` over written entries)."""

    def __init__(self, h: str) -> None:
        self.h = h

    def content_hash(self) -> str:
        return self.h


def save_native_streaming(dictionaries: Iterable[Dictionary], out_dir: Path, model_name: str = "",
                          model_hash: str = "") -> Path:
    """``save_native`` of per-layer dictionaries given one at a time (each can be freed once written): a set
    larger than memory. Same files and index (the set's content hash from the members' hashes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = [_write_dictionary(d, out_dir) for d in dictionaries]
    keys = [(e["layer"], e["site"]) for e in entries]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two dictionaries for the same (layer, site) among {keys}")
    members = DictionarySet({k: _Hashed(e["content_hash"]) for k, e in zip(keys, entries, strict=True)})  # type: ignore[misc]
    entries.sort(key=lambda e: (e["layer"], e["site"]))
    index = {"format": FORMAT, "version": 1, "model_name": model_name, "model_hash": model_hash,
             "content_hash": members.content_hash(), "entries": entries}
    (out_dir / INDEX).write_text(json.dumps(index, indent=2))
    return out_dir


def load_native(path: Path, lazy: bool = False) -> DictionarySet:
    """Read a native set; ``lazy``: matrices memory-mapped (``formats/lazy.py``; a CLT's decoders, not its encoders)."""
    path = Path(path)
    index_path = path / INDEX
    index = read_json(index_path)
    if index.get("format") != FORMAT:
        raise ValueError(f"{index_path} has format {index.get('format')!r}; expected {FORMAT!r}")
    if int(index.get("version", 0)) > VERSION:
        raise ValueError(f"{index_path} is version {index['version']}; this code reads up to {VERSION}")
    dicts: dict[tuple[int, str], Dictionary] = {}
    clt: CrossLayerTranscoder | None = None
    for i, e in enumerate(need(index, "entries", index_path)):
        cfg_path = path / need(e, "config", index_path)
        if e.get("kind") == "clt":
            if clt is not None:
                raise ValueError(f"{index_path} lists two cross-layer transcoders")
            clt = _load_clt(path, cfg_path, need(e, "weights", index_path), index_path, lazy)
            continue
        cfg = DictionaryConfig.from_dict(read_json(cfg_path))
        if (cfg.layer, cfg.site) != (e.get("layer"), e.get("site")):
            raise ValueError(f"entry {i} of {index_path} says (layer, site) = ({e.get('layer')}, {e.get('site')!r}) "
                             f"but {cfg_path} says ({cfg.layer}, {cfg.site!r})")
        w_path = path / need(e, "weights", index_path)
        if lazy:
            d = lazy_dictionary(cfg, map_safetensors(w_path), source=str(w_path))
        else:
            d = Dictionary.from_tensors(cfg, read_safetensors(w_path), source=str(w_path))
        if (cfg.layer, cfg.site) in dicts:
            raise ValueError(f"{index_path} lists two dictionaries for (layer {cfg.layer}, site {cfg.site!r})")
        dicts[(cfg.layer, cfg.site)] = d
    meta = {"model_name": index.get("model_name", ""), "model_hash": index.get("model_hash", "")}
    if clt is not None:
        return CLTDictionarySet(dicts, clt=clt, **meta)
    return DictionarySet(dicts, **meta)


def _load_clt(path: Path, cfg_path: Path, weights: list[str], index_path: Path, lazy: bool = False
              ) -> CrossLayerTranscoder:
    cfg = CLTConfig.from_dict(read_json(cfg_path))
    if not isinstance(weights, list) or len(weights) != cfg.n_layers:
        raise ValueError(f"{index_path}: the CLT entry's 'weights' must list {cfg.n_layers} files (one per source "
                         f"layer, as {cfg_path} says n_layers={cfg.n_layers}); got {weights!r}")
    files = [path / w for w in weights]
    if lazy:
        return lazy_clt(cfg, [map_safetensors(f) for f in files], [str(f) for f in files])
    return CrossLayerTranscoder.from_layer_tensors(cfg, [read_safetensors(f) for f in files], [str(f) for f in files])
