"""SAELens: one directory per SAE with ``cfg.json`` and ``sae_weights.safetensors``.

Tensors (SAELens orientation): ``W_enc`` [d_in, d_sae] (transposed to ours), ``W_dec`` [d_sae, d_out],
``b_enc`` [d_sae], ``b_dec`` [d_out]; ``threshold`` [d_sae] (JumpReLU; ``log_threshold`` in training
checkpoints); ``W_skip`` [d_out, d_in] (skip transcoders).

SAELens' function: ``pre = (x − b_dec·apply_b_dec_to_input) @ W_enc + b_enc``;
standard: relu(pre); jumprelu: relu(pre)·(pre > threshold); topk: relu of the k largest pre;
``x̂ = acts @ W_dec + b_dec``. Folding: ``b_enc' = b_enc − b_dec @ W_enc``; ``threshold' = max(threshold, 0)``
(the ReLU in front of the jump). Config keys are read flat (SAELens ≤ 5) or from ``metadata``/``meta``
(SAELens 6). Refused: ``gated`` and other architectures, ``normalize_activations`` other than "none"
(fold the scaling factor first), ``hook_head_index``, ``rescale_acts_by_decoder_norm``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from workers.dictionaries.formats.hooks import parse_hook
from workers.dictionaries.formats.tensors_io import need, read_json, read_safetensors, take
from workers.dictionaries.modules import Dictionary, DictionaryConfig

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"

_ARCH = {  # architecture -> (kind, activation, skip)
    "standard": ("sae", "relu", False),
    "jumprelu": ("sae", "jumprelu", False),
    "topk": ("sae", "topk", False),
    "transcoder": ("transcoder", "relu", False),
    "skip_transcoder": ("transcoder", "relu", True),
    "jumprelu_transcoder": ("transcoder", "jumprelu", False),
}


def _meta(cfg: dict[str, Any], key: str) -> Any:
    for section in ("metadata", "meta"):
        if isinstance(cfg.get(section), dict) and cfg[section].get(key) is not None:
            return cfg[section][key]
    return cfg.get(key)


def is_saelens_dir(path: Path) -> bool:
    return (path / CFG).is_file() and (path / WEIGHTS).is_file()


def read_saelens(path: Path) -> Dictionary:
    path = Path(path)
    cfg_path, w_path = path / CFG, path / WEIGHTS
    cfg = read_json(cfg_path)
    arch = cfg.get("architecture")
    if arch is None:  # SAELens <= 5 without an architecture key: standard or topk via activation_fn_str
        arch = "topk" if cfg.get("activation_fn_str") == "topk" else "standard"
    if arch not in _ARCH:
        raise ValueError(f"{cfg_path}: architecture {arch!r} is not supported; supported are {sorted(_ARCH)}")
    kind, activation, skip = _ARCH[arch]
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm != "none":
        raise ValueError(f"{cfg_path}: normalize_activations={norm!r} is not supported; fold the scaling into "
                         "the weights first (SAELens: sae.fold_activation_norm_scaling_factor) and save again")
    if _meta(cfg, "hook_head_index") is not None:
        raise ValueError(f"{cfg_path}: per-head SAEs (hook_head_index) are not supported")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise ValueError(f"{cfg_path}: rescale_acts_by_decoder_norm=true is not supported")
    d_in, d_sae = int(need(cfg, "d_in", cfg_path)), int(need(cfg, "d_sae", cfg_path))
    d_out = int(cfg.get("d_out", d_in)) if kind == "transcoder" else d_in
    hook_in = _meta(cfg, "hook_name")
    if not hook_in:
        raise ValueError(f"config key 'hook_name' missing from {cfg_path} (flat or under 'metadata')")
    site_in = parse_hook(hook_in, "in", _meta(cfg, "hook_layer"))
    if kind == "sae":
        if site_in.site != "attn":
            raise ValueError(f"{cfg_path}: SAE on {hook_in!r}: only attention-output SAEs (hook_attn_out) are "
                             "splice sites here; MLPs are replaced by transcoders")
    else:
        hook_out = cfg.get("hook_name_out") or _meta(cfg, "hook_name_out")
        if not hook_out:
            raise ValueError(f"config key 'hook_name_out' missing from {cfg_path} (needed for a transcoder)")
        site_out = parse_hook(hook_out, "out", cfg.get("hook_layer_out"))
        if site_in.site != "mlp" or site_out.site != "mlp" or site_in.layer != site_out.layer:
            raise ValueError(f"{cfg_path}: transcoder {hook_in!r} -> {hook_out!r} does not replace one MLP")

    t = read_safetensors(w_path)
    W_enc = take(t, "W_enc", w_path, (d_in, d_sae))
    W_dec = take(t, "W_dec", w_path, (d_sae, d_out))
    b_enc = take(t, "b_enc", w_path, (d_sae,))
    b_dec = take(t, "b_dec", w_path, (d_out,))
    apply_b_dec = bool(cfg.get("apply_b_dec_to_input", kind == "sae")) and kind == "sae"
    tensors = {"W_enc": W_enc.T.contiguous(), "W_dec": W_dec,
               "b_enc": b_enc - b_dec @ W_enc if apply_b_dec else b_enc, "b_dec": b_dec}
    if activation == "jumprelu":
        if "threshold" in t:
            thr = take(t, "threshold", w_path, (d_sae,))
        else:
            thr = take(t, "log_threshold", w_path, (d_sae,)).exp()
        # relu(pre)·(pre > θ) = pre·(pre > max(θ, 0))
        tensors["threshold"] = thr.clamp_min(0.0)
    if skip:
        tensors["W_skip"] = take(t, "W_skip", w_path, (d_out, d_in))
    k = None
    if activation == "topk":
        k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
        if not k:
            raise ValueError(f"config key 'k' missing from {cfg_path} (needed for architecture 'topk')")
    dcfg = DictionaryConfig(
        kind=kind, site=site_in.site, layer=site_in.layer, d_in=d_in, d_out=d_out, d_dict=d_sae,
        activation=activation, k=int(k) if k else None, skip=skip,
        extra={"source_format": "saelens", "source": str(path), "hook_name": hook_in,
               "model_name": _meta(cfg, "model_name") or "", "input_space": site_in.space},
    )
    return Dictionary.from_tensors(dcfg, tensors, source=str(w_path))


def write_saelens(d: Dictionary, out_dir: Path, model_name: str = "") -> Path:
    """Write one dictionary as a SAELens 6 directory (architecture standard / jumprelu / topk /
    transcoder / skip_transcoder / jumprelu_transcoder, apply_b_dec_to_input false)."""
    c = d.cfg
    if c.activation == "topk" and c.topk_signed:
        raise ValueError(f"{c.name}: SAELens' TopK keeps only positive activations; a signed TopK has no "
                         "SAELens equivalent")
    if c.activation == "jumprelu" and bool((d.threshold < 0).any()):
        raise ValueError(f"{c.name}: negative JumpReLU thresholds have no SAELens equivalent (SAELens applies "
                         "a ReLU before the jump)")
    if c.kind == "sae":
        arch, hook = {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk"}[c.activation], \
            f"blocks.{c.layer}.hook_attn_out"
    else:
        if c.activation == "topk" or (c.skip and c.activation != "relu"):
            raise ValueError(f"{c.name}: SAELens has no {c.activation} transcoder{' with skip' if c.skip else ''}")
        arch = "skip_transcoder" if c.skip else {"relu": "transcoder", "jumprelu": "jumprelu_transcoder"}[c.activation]
        hook = f"blocks.{c.layer}.mlp.hook_in"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {"architecture": arch, "d_in": c.d_in, "d_sae": c.d_dict, "dtype": "float32",
                           "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
                           "metadata": {"model_name": model_name, "hook_name": hook, "hook_layer": c.layer}}
    if c.activation == "topk":
        cfg["k"] = c.k
    if c.kind == "transcoder":
        cfg.update(d_out=c.d_out, hook_name_out=f"blocks.{c.layer}.hook_mlp_out", hook_layer_out=c.layer)
    (out_dir / CFG).write_text(json.dumps(cfg, indent=2))
    t = d.tensors()
    w: dict[str, torch.Tensor] = {"W_enc": t["W_enc"].T.contiguous(), "W_dec": t["W_dec"],
                                  "b_enc": t["b_enc"], "b_dec": t["b_dec"]}
    if "threshold" in t:
        w["threshold"] = t["threshold"]
    if "W_skip" in t:
        w["W_skip"] = t["W_skip"]
    save_file(w, str(out_dir / WEIGHTS))
    return out_dir
