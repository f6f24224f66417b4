"""Dictionary files: the native format and readers for what users already have.

``load_dictionary_set(path, model=None)`` detects the layout of ``path``:

- native (``dictionaries.json``; see ``workers.dictionaries.formats.native``),
- circuit-tracer transcoder set (``config.yaml`` + ``layer_{i}.safetensors``) or cross-layer transcoder
  (``config.yaml`` + ``W_enc_{i}`` / ``W_dec_{i}.safetensors``; loaded as a ``CLTDictionarySet``),
- one SAELens SAE/transcoder directory (``cfg.json`` + ``sae_weights.safetensors``),
- one lm-saes / Llama Scope directory (``config.json`` + ``sae_weights.safetensors``, or the 2024
  ``hyperparams.json`` layout),
- a directory whose subdirectories are any mix of the two single-dictionary layouts above.

Every reader folds the source's conventions (transposes, decoder-bias subtraction, dataset norm
scaling, decoder-norm sparsity, ReLU-before-JumpReLU) into our canonical tensors, so the loaded
dictionary computes the same function as the source. Dictionaries that read TransformerLens'
``ln2.hook_normalized`` (before the norm's gain) are marked ``extra["input_space"] = "normalized"``;
pass ``model`` to fold the gain in (``fold_input_norm``), which is required before splicing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch import nn

from workers.dictionaries.crosslayer.module import CLTDictionarySet, clt_of
from workers.dictionaries.formats.circuit_tracer import (
    is_circuit_tracer_dir,
    read_circuit_tracer,
    write_circuit_tracer,
    write_circuit_tracer_clt,
)
from workers.dictionaries.formats.hooks import HookSite, fold_clt_input_norm, fold_input_norm, parse_hook
from workers.dictionaries.formats.lm_saes import is_lm_saes_dir, read_lm_saes
from workers.dictionaries.formats.native import INDEX, load_native, save_native
from workers.dictionaries.formats.saelens import is_saelens_dir, read_saelens, write_saelens
from workers.dictionaries.modules import Dictionary, DictionarySet
from workers.models.sites import blocks

FormatName = Literal["native", "circuit-tracer", "saelens", "lm-saes", "directory"]

__all__ = [
    "FormatName", "HookSite", "detect_format", "fold_input_norm", "load_dictionary_set", "parse_hook",
    "read_circuit_tracer", "read_lm_saes", "read_saelens", "save_dictionary_set", "write_circuit_tracer",
    "write_circuit_tracer_clt", "write_saelens",
]


def save_dictionary_set(ds: DictionarySet, out_dir: Path) -> Path:
    """Write ``ds`` in the native format (see ``workers.dictionaries.formats.native``)."""
    return save_native(ds, Path(out_dir))


def _single(path: Path) -> Dictionary | None:
    if is_saelens_dir(path):
        return read_saelens(path)
    if is_lm_saes_dir(path):
        return read_lm_saes(path)
    return None


def detect_format(path: Path) -> FormatName:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory; a dictionary set is a directory")
    if (path / INDEX).is_file():
        return "native"
    if is_circuit_tracer_dir(path):
        return "circuit-tracer"
    if is_saelens_dir(path):
        return "saelens"
    if is_lm_saes_dir(path):
        return "lm-saes"
    if any(sub.is_dir() and (is_saelens_dir(sub) or is_lm_saes_dir(sub)) for sub in path.iterdir()):
        return "directory"
    raise ValueError(
        f"cannot tell the format of {path}: expected {INDEX} (native), config.yaml (circuit-tracer), cfg.json + "
        "sae_weights.safetensors (SAELens), config.json + sae_weights.safetensors or hyperparams.json (lm-saes), "
        "or subdirectories holding SAELens / lm-saes dictionaries"
    )


def load_dictionary_set(path: Path, model: nn.Module | None = None, lazy: bool = False) -> DictionarySet:
    """Load a dictionary set in any supported layout (see the module docstring).

    ``lazy``: dictionaries of the native and circuit-tracer layouts get their float32 matrices (a cross-layer
    transcoder: its decoders) memory-mapped from their files, not read (``formats/lazy.py``: rows are paged in when
    touched, as reclaimable page cache); SAELens and lm-saes layouts are read whole.

    With ``model``, dictionaries reading ``ln2.hook_normalized`` get the model's pre-MLP norm folded in,
    and every dictionary's d_in is checked against the model's hidden size.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "native":
        ds = load_native(path, lazy=lazy)
    elif fmt == "circuit-tracer":
        ds = read_circuit_tracer(path, lazy=lazy)
    elif fmt in ("saelens", "lm-saes"):
        d = _single(path)
        assert d is not None
        ds = DictionarySet({(d.cfg.layer, d.cfg.site): d}, model_name=d.cfg.extra.get("model_name", ""))
    else:
        dicts: dict[tuple[int, str], Dictionary] = {}
        names: list[str] = []
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            d = _single(sub)
            if d is None:
                continue
            key = (d.cfg.layer, d.cfg.site)
            if key in dicts:
                raise ValueError(f"{sub} and {dicts[key].cfg.extra.get('source')} both hold a dictionary for "
                                 f"(layer {key[0]}, site {key[1]!r})")
            dicts[key] = d
            names.append(d.cfg.extra.get("model_name", ""))
        model_names = {n for n in names if n}
        ds = DictionarySet(dicts, model_name=model_names.pop() if len(model_names) == 1 else "")
    if model is not None:
        adapt_to_model(ds, model)
    return ds


def adapt_to_model(ds: DictionarySet, model: nn.Module) -> DictionarySet:
    """Fold pre-MLP norm gains where needed and check sizes against ``model`` (in place)."""
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    clt = clt_of(ds)
    if clt is not None:
        n_layers = len(blocks(model))
        if clt.n_layers != n_layers or (hidden is not None and clt.cfg.d_model != hidden):
            raise ValueError(f"cross-layer transcoder {clt.cfg.name!r} spans {clt.n_layers} layers of width "
                             f"{clt.cfg.d_model}; the model has {n_layers} layers of width {hidden}: wrong model?")
        if clt.cfg.input_site == "normalized":
            assert isinstance(ds, CLTDictionarySet)
            ds.clt = fold_clt_input_norm(clt, model)
    for _key, d in ds:
        if hidden is not None and d.cfg.d_in != hidden:
            raise ValueError(f"dictionary {d.cfg.name!r} reads {d.cfg.d_in} features but the model's hidden size "
                             f"is {hidden}: wrong model for this dictionary set?")
        if d.cfg.extra.get("input_space") == "normalized":
            fold_input_norm(d, model)
    return ds
