"""lm-saes / Llama Scope (OpenMOSS, the seed paper's authors).

Current layout: ``config.json`` + ``sae_weights.safetensors``. Config keys: ``sae_type`` ("sae"; a
transcoder is an SAE whose ``hook_point_in`` differs from ``hook_point_out``), ``d_model``,
``expansion_factor`` (or ``d_sae``), ``act_fn`` (relu | jumprelu | topk), ``top_k``, ``norm_activation``
(dataset-wise | inference; token-/batch-wise refused), ``sparsity_include_decoder_norm`` (default
true), ``use_decoder_bias`` (default true). Tensors: ``W_E`` [d_model, d_sae], ``b_E`` [d_sae],
``W_D`` [d_sae, d_model], ``b_D`` [d_model], ``activation_function.log_jumprelu_threshold`` [d_sae],
``dataset_average_activation_norm.<hook>`` (scalars).

Their function, with c = √d_model / (dataset average norm at the hook) and n_i = ‖W_D[i]‖ when
sparsity_include_decoder_norm (else 1):
    h = (c_in·x @ W_E + b_E) · n;   a = act(h) / n;   y = (a @ W_D + b_D) / c_out
(JumpReLU: act(h) = h·(h > exp(log_threshold)); TopK: the k largest of relu(h)). Folded exactly into
ours: W_enc = (c_in · W_E · n).T, b_enc = b_E · n, threshold = exp(log_threshold),
W_dec = W_D / (n · c_out), b_dec = b_D / c_out.

2024 layout (Llama Scope release): ``hyperparams.json`` + ``checkpoints/final.safetensors`` (or
``sae_weights.safetensors``) with nn.Linear tensors ``encoder.weight`` [d_sae, d_model],
``encoder.bias``, ``decoder.weight`` [d_model, d_sae], ``decoder.bias``, and the dataset norms in
``dataset_average_activation_norm: {"in": …, "out": …}``; ReLU and TopK read (JumpReLU refused there).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from workers.dictionaries.formats.hooks import HookSite, parse_hook
from workers.dictionaries.formats.tensors_io import need, read_json, read_safetensors, take
from workers.dictionaries.modules import Dictionary, DictionaryConfig

CONFIG = "config.json"
HYPERPARAMS = "hyperparams.json"
WEIGHTS = "sae_weights.safetensors"


def is_lm_saes_dir(path: Path) -> bool:
    return ((path / CONFIG).is_file() and (path / WEIGHTS).is_file()) or (path / HYPERPARAMS).is_file()


def _sites(cfg: dict[str, Any], cfg_path: Path) -> tuple[HookSite, str, str]:
    hook_in = need(cfg, "hook_point_in", cfg_path)
    hook_out = cfg.get("hook_point_out") or hook_in
    s_in, s_out = parse_hook(hook_in, "in"), parse_hook(hook_out, "out")
    if s_in.layer != s_out.layer or s_in.site != s_out.site:
        raise ValueError(f"{cfg_path}: {hook_in!r} -> {hook_out!r} is neither an attention-output SAE nor a "
                         "transcoder of one MLP")
    return s_in, hook_in, hook_out


def _norm_factor(cfg: dict[str, Any], norms: dict[str, float], hook: str, d_model: int, where: Path) -> float:
    mode = cfg.get("norm_activation", "dataset-wise")
    if mode == "inference":
        return 1.0
    if mode != "dataset-wise":
        raise ValueError(f"{where}: norm_activation {mode!r} rescales each token by its own norm, which is not a "
                         "fixed linear map; only dataset-wise and inference are supported")
    if hook not in norms:
        raise ValueError(f"{where}: norm_activation is dataset-wise but the dataset average norm for {hook!r} is "
                         f"missing (have {sorted(norms)})")
    return math.sqrt(d_model) / float(norms[hook])


def _build(cfg: dict[str, Any], cfg_path: Path, w_path: Path, W_E: torch.Tensor, b_E: torch.Tensor,
           W_D: torch.Tensor, b_D: torch.Tensor, log_thr: torch.Tensor | None,
           c_in: float, c_out: float, site: HookSite, hooks: tuple[str, str]) -> Dictionary:
    d_model, d_sae = W_E.shape
    act = str(cfg.get("act_fn", "relu")).lower()
    if act not in ("relu", "jumprelu", "topk"):
        raise ValueError(f"{cfg_path}: act_fn {act!r} is not supported (relu, jumprelu, topk); batchtopk depends on "
                         "the whole batch: convert it to jumprelu first")
    n = W_D.norm(dim=-1) if cfg.get("sparsity_include_decoder_norm", True) else torch.ones(d_sae)
    tensors = {"W_enc": (c_in * W_E * n[None, :]).T.contiguous(), "b_enc": b_E * n,
               "W_dec": W_D / (n[:, None] * c_out), "b_dec": b_D / c_out}
    if act == "jumprelu":
        if log_thr is None:
            raise ValueError(f"tensor 'activation_function.log_jumprelu_threshold' missing from {w_path} "
                             f"(expected shape [{d_sae}]) for act_fn jumprelu")
        tensors["threshold"] = log_thr.exp()
    k = None
    if act == "topk":
        k = need(cfg, "top_k", cfg_path)
    kind = "sae" if site.site == "attn" else "transcoder"
    dcfg = DictionaryConfig(kind=kind, site=site.site, layer=site.layer, d_in=d_model, d_out=W_D.shape[1],
                            d_dict=d_sae, activation=act, k=int(k) if k is not None else None,  # type: ignore[arg-type]
                            extra={"source_format": "lm-saes", "source": str(cfg_path.parent),
                                   "hook_point_in": hooks[0], "hook_point_out": hooks[1],
                                   "input_space": site.space, "model_name": cfg.get("model_name", "")})
    return Dictionary.from_tensors(dcfg, tensors, source=str(w_path))


def read_lm_saes(path: Path) -> Dictionary:
    path = Path(path)
    if (path / HYPERPARAMS).is_file() and not (path / CONFIG).is_file():
        return _read_2024(path)
    cfg_path, w_path = path / CONFIG, path / WEIGHTS
    cfg = read_json(cfg_path)
    sae_type = cfg.get("sae_type", "sae")
    if sae_type not in ("sae", "transcoder"):
        raise ValueError(f"{cfg_path}: sae_type {sae_type!r} is not supported (sae, transcoder); cross-layer "
                         "transcoders, crosscoders and LoRSA are not per-site dictionaries")
    site, hook_in, hook_out = _sites(cfg, cfg_path)
    d_model = int(need(cfg, "d_model", cfg_path))
    d_sae = int(cfg["d_sae"]) if "d_sae" in cfg else int(round(d_model * float(need(cfg, "expansion_factor", cfg_path))))
    t = read_safetensors(w_path)
    W_E = take(t, "W_E", w_path, (d_model, d_sae))
    b_E = take(t, "b_E", w_path, (d_sae,))
    W_D = take(t, "W_D", w_path, (d_sae, d_model))
    b_D = take(t, "b_D", w_path, (d_model,)) if cfg.get("use_decoder_bias", True) else torch.zeros(d_model)
    log_thr = take(t, "activation_function.log_jumprelu_threshold", w_path, (d_sae,)) \
        if "activation_function.log_jumprelu_threshold" in t else None
    prefix = "dataset_average_activation_norm."
    norms = {k[len(prefix):]: float(v) for k, v in t.items() if k.startswith(prefix)}
    c_in = _norm_factor(cfg, norms, hook_in, d_model, w_path)
    c_out = _norm_factor(cfg, norms, hook_out, d_model, w_path)
    return _build(cfg, cfg_path, w_path, W_E, b_E, W_D, b_D, log_thr, c_in, c_out, site, (hook_in, hook_out))


def _read_2024(path: Path) -> Dictionary:
    cfg_path = path / HYPERPARAMS
    cfg = read_json(cfg_path)
    w_path = next((p for p in (path / "checkpoints" / "final.safetensors", path / WEIGHTS) if p.is_file()), None)
    if w_path is None:
        raise FileNotFoundError(f"no weights next to {cfg_path}: expected checkpoints/final.safetensors or {WEIGHTS}")
    if str(cfg.get("act_fn", "relu")).lower() == "jumprelu":
        raise ValueError(f"{cfg_path}: JumpReLU in the 2024 lm-saes layout is not supported; convert it to the "
                         "current layout (config.json + sae_weights.safetensors)")
    site, hook_in, hook_out = _sites(cfg, cfg_path)
    t = read_safetensors(w_path)
    enc = take(t, "encoder.weight", w_path)
    d_sae, d_model = enc.shape
    W_E = enc.T
    b_E = take(t, "encoder.bias", w_path, (d_sae,))
    W_D = take(t, "decoder.weight", w_path, (d_model, d_sae)).T.contiguous()
    b_D = take(t, "decoder.bias", w_path, (d_model,)) if "decoder.bias" in t else torch.zeros(d_model)
    raw = cfg.get("dataset_average_activation_norm") or {}
    norms = {hook_in: raw.get("in"), hook_out: raw.get("out")} if raw else {}
    norms = {k: v for k, v in norms.items() if v is not None}
    c_in = _norm_factor(cfg, norms, hook_in, d_model, cfg_path)
    c_out = _norm_factor(cfg, norms, hook_out, d_model, cfg_path)
    return _build(cfg, cfg_path, w_path, W_E, b_E, W_D, b_D, None, c_in, c_out, site, (hook_in, hook_out))
