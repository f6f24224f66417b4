"""Lazy dictionary weights: safetensors matrices memory-mapped instead of read (``load_dictionary_set(lazy=True)``).

A dictionary's matrices (``W_enc``, ``W_dec``, ``W_skip``; rows = features) become views of a private,
copy-on-write mapping of their file (``np.memmap(mode="c")``): nothing is read at load time, and a row is paged in
from the file when something touches it. The engine gathers decoder rows of the *active* features only
(``W_dec[feat_idx]``: ``linearise.decode_active``, the injections, ``nodes.DecoderOperand``), so at most the pages
of those rows are ever read; the encoder is read whole on every clean run (each feature's pre-activation needs its
row), but as file pages, not as the process's own memory.

What "held" means. Pages of a file mapping that were never written are page cache: shared, clean, and reclaimable
by the kernel at any time (it re-reads them from the file on the next touch), counted in ``RssFile``. Memory the
process owns (``RssAnon``: heap, eager tensors, copies) cannot be reclaimed without swap. A lazily loaded set holds
its matrices as file pages only; it holds anonymous memory for its vectors (biases, thresholds: O(d_dict)) and for
whatever the computation gathers from it (one site's rows at a time). Writing to a mapped tensor in place (e.g.
``fold_input_norm``) copies the touched pages into anonymous memory and leaves the file unchanged.

Decoder mappings are advised ``MADV_RANDOM`` (a gathered row does not read its neighbours ahead). A cross-layer transcoder
(``lazy_clt``) gets its per-source-layer decoders mapped; its encoders are stacked into one parameter (read). Only
float32 tensors of two or more dimensions are mapped (what the native writer stores); other dtypes are read and
converted to float32 as the eager readers do (anonymous memory, as before), and so are vectors and scalars.
Moving a set to another device or dtype (``place``) copies it: lazy loading saves memory on the CPU in fp32.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from workers.dictionaries.crosslayer.module import CLTConfig, CrossLayerTranscoder
from workers.dictionaries.modules import Dictionary, DictionaryConfig


def map_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, float32 matrices as copy-on-write memory maps (module doc), the rest
    read and converted to float32 as ``tensors_io.read_safetensors`` does."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing weights file {path}")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    base = 8 + n
    out: dict[str, torch.Tensor] = {}
    rest = []
    for name, info in header.items():
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if info["dtype"] == "F32" and len(shape) >= 2 and end > start and (base + start) % 4 == 0:
            arr = np.memmap(path, dtype=np.float32, mode="c", offset=base + start, shape=shape)
            if name.startswith("W_dec") and hasattr(mmap, "MADV_RANDOM"):
                arr._mmap.madvise(mmap.MADV_RANDOM)  # rows are gathered: no read-around of neighbouring rows
            out[name] = torch.from_numpy(arr)
        else:
            rest.append(name)
    if rest:
        with safe_open(str(path), framework="pt") as f:
            for name in rest:
                t = f.get_tensor(name)
                out[name] = t.to(torch.float32) if t.is_floating_point() else t
    return out


def lazy_dictionary(cfg: DictionaryConfig, tensors: dict[str, torch.Tensor], source: str = "") -> Dictionary:
    """``Dictionary.from_tensors`` without copying: the same name and shape checks (run on a meta-device module,
    which allocates nothing), then the parameters are the given tensors themselves (mapped ones stay mapped)."""
    with torch.device("meta"):
        d = Dictionary.from_tensors(cfg, tensors, source=source)
    for k in cfg.tensor_shapes():
        t = tensors[k]
        setattr(d, k, nn.Parameter(t if t.dtype == torch.float32 else t.to(torch.float32)))
    return d


def lazy_clt(cfg: CLTConfig, layers: list[dict[str, torch.Tensor]], sources: list[str] | None = None
             ) -> CrossLayerTranscoder:
    """``CrossLayerTranscoder.from_layer_tensors`` with each source layer's decoder ``W_dec[ℓ]`` kept as given
    (mapped ones stay mapped): the same checks on a meta-device module, then the decoders bound as they are. The
    encoders, biases and thresholds are stacked into the module's ``[L, ...]`` parameters (read: the encoders are
    1 / ((L + 1) / 2) of the decoders)."""
    with torch.device("meta"):
        clt = CrossLayerTranscoder.from_layer_tensors(cfg, layers, sources)
    clt.W_enc = nn.Parameter(torch.stack([t["W_enc"].float() for t in layers]))
    clt.b_enc = nn.Parameter(torch.stack([t["b_enc"].float() for t in layers]))
    clt.b_dec = nn.Parameter(torch.stack([t["b_dec"].float() for t in layers]))
    if cfg.activation == "jumprelu":
        clt.threshold = nn.Parameter(torch.stack([t["threshold"].float() for t in layers]))
    clt.W_dec = nn.ParameterList([nn.Parameter(t["W_dec"] if t["W_dec"].dtype == torch.float32
                                               else t["W_dec"].float()) for t in layers])
    return clt


def _mapping(t: torch.Tensor) -> dict | None:
    """The ``/proc/self/smaps`` entry holding ``t``'s first byte: its path (``""``: anonymous) and ``Rss`` bytes."""
    ptr = t.data_ptr()
    found: dict | None = None
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=6)
            if "-" in first[0] and len(first) >= 5:  # a mapping's header: range perms offset dev inode [path]
                if found is not None:
                    break
                lo, hi = (int(x, 16) for x in first[0].split("-"))
                if lo <= ptr < hi:
                    found = {"path": first[5].strip() if len(first) > 5 and int(first[4]) != 0 else "", "rss": 0}
            elif found is not None and first[0] == "Rss:":
                found["rss"] = int(first[1]) * 1024
    return found


def is_mapped(t: torch.Tensor) -> bool:
    """Whether ``t``'s memory is a file mapping: a lazily loaded matrix, not a copy."""
    m = _mapping(t)
    return m is not None and m["path"].startswith("/")


def resident_bytes(t: torch.Tensor) -> int:
    """Bytes of the file mapping holding ``t`` that are resident in this process (its pages touched so far, and
    neighbours the kernel mapped with them); 0 if ``t`` is not mapped."""
    m = _mapping(t)
    return m["rss"] if m is not None and m["path"].startswith("/") else 0


def rss_kinds() -> dict[str, int]:
    """Resident memory of this process by kind, bytes (``/proc/self/status``): ``anon`` (its own: heap, tensors),
    ``file`` (mapped file pages: page cache, reclaimable), ``shmem``, and ``hwm`` (peak RSS of all kinds)."""
    keys = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem", "VmHWM:": "hwm"}
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in keys:
                out[keys[parts[0]]] = int(parts[1]) * 1024
    return out
