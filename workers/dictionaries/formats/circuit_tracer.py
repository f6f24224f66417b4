"""circuit-tracer transcoder sets: ``config.yaml`` plus one ``layer_{i}.safetensors`` per layer.

``config.yaml``: ``model_kind: transcoder_set`` (cross-layer transcoders are refused), ``model_name``,
``feature_input_hook`` / ``feature_output_hook`` (hook names without the ``blocks.{i}.`` prefix, e.g.
``mlp.hook_in`` / ``mlp.hook_out`` or ``ln2.hook_normalized`` / ``hook_mlp_out``), optional
``activation`` (relu | topk | jumprelu) and ``k``, optional ``transcoders:`` list of per-layer files
(local paths, relative to the directory; ``hf://`` URIs are refused offline), otherwise
``layer_0.safetensors`` … ``layer_{L−1}.safetensors``, every layer required.

Per file, rows = features (our orientation): ``W_enc`` [d_tc, d_model], ``W_dec`` [d_tc, d_model],
``b_enc`` [d_tc], ``b_dec`` [d_model], optional ``activation_function.threshold`` [d_tc] (JumpReLU:
``pre·(pre > θ)``), ``W_skip`` [d_model, d_model], ``k`` (scalar; TopK). circuit-tracer's TopK keeps the
k largest pre-activations whatever their sign, so TopK transcoders load with ``topk_signed=True``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from workers.dictionaries.formats.hooks import parse_hook
from workers.dictionaries.formats.tensors_io import need, read_safetensors, take
from workers.dictionaries.modules import Dictionary, DictionaryConfig, DictionarySet

CONFIG = "config.yaml"
_LAYER_RE = re.compile(r"^layer_(\d+)\.safetensors$")


def is_circuit_tracer_dir(path: Path) -> bool:
    return (path / CONFIG).is_file()


def _layer_files(path: Path, cfg: dict[str, Any], cfg_path: Path) -> list[Path]:
    if cfg.get("transcoders"):
        files = []
        for i, p in enumerate(cfg["transcoders"]):
            if str(p).startswith("hf://"):
                raise ValueError(f"{cfg_path}: transcoders[{i}] is {p!r}; this machine is offline: download the "
                                 "files and list local paths")
            q = Path(p)
            files.append(q if q.is_absolute() else path / q)
        return files
    layers = sorted(int(m.group(1)) for f in path.iterdir() if (m := _LAYER_RE.match(f.name)))
    if not layers:
        raise FileNotFoundError(f"no layer_<i>.safetensors files in {path} and no 'transcoders' list in {cfg_path}")
    missing = sorted(set(range(max(layers) + 1)) - set(layers))
    if missing:
        raise FileNotFoundError(f"{path}: transcoders for layers {missing} are missing; a transcoder set needs "
                                f"every layer 0..{max(layers)}")
    return [path / f"layer_{i}.safetensors" for i in range(max(layers) + 1)]


def read_circuit_tracer(path: Path) -> DictionarySet:
    path = Path(path)
    cfg_path = path / CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(f"missing config file {cfg_path}")
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    kind = need(cfg, "model_kind", cfg_path)
    if kind != "transcoder_set":
        raise ValueError(f"{cfg_path}: model_kind {kind!r} is not supported (only transcoder_set; cross-layer "
                         "transcoders write to several layers and are not a per-site dictionary)")
    hook_in, hook_out = need(cfg, "feature_input_hook", cfg_path), need(cfg, "feature_output_hook", cfg_path)
    activation_cfg = cfg.get("activation")
    dicts: dict[tuple[int, str], Dictionary] = {}
    for layer, f in enumerate(_layer_files(path, cfg, cfg_path)):
        site_in = parse_hook(f"blocks.{layer}.{hook_in}" if "blocks." not in hook_in else hook_in, "in")
        site_out = parse_hook(f"blocks.{layer}.{hook_out}" if "blocks." not in hook_out else hook_out, "out")
        if site_in.site != "mlp" or site_out.site != "mlp":
            raise ValueError(f"{cfg_path}: {hook_in!r} -> {hook_out!r} is not an MLP transcoder")
        t = read_safetensors(f)
        d_tc, d_model = take(t, "b_enc", f).shape[0], take(t, "b_dec", f).shape[0]
        tensors = {"W_enc": take(t, "W_enc", f, (d_tc, d_model)), "W_dec": take(t, "W_dec", f, (d_tc, d_model)),
                   "b_enc": t["b_enc"], "b_dec": t["b_dec"]}
        if "W_skip" in t:
            tensors["W_skip"] = take(t, "W_skip", f, (d_model, d_model))
        k = None
        if activation_cfg == "topk" or (activation_cfg is None and "k" in t):
            activation = "topk"
            k = cfg.get("k") if cfg.get("k") is not None else (int(t["k"].item()) if "k" in t else None)
            if k is None:
                raise ValueError(f"{cfg_path}: activation topk needs 'k' in the config or a 'k' tensor in {f}")
        elif "activation_function.threshold" in t:
            activation = "jumprelu"
            tensors["threshold"] = take(t, "activation_function.threshold", f, (d_tc,))
        elif activation_cfg in (None, "relu"):
            activation = "relu"
        else:
            raise ValueError(f"{cfg_path}: activation {activation_cfg!r} needs tensor "
                             f"'activation_function.threshold' in {f}" if activation_cfg == "jumprelu"
                             else f"{cfg_path}: unknown activation {activation_cfg!r}")
        dcfg = DictionaryConfig(
            kind="transcoder", site="mlp", layer=layer, d_in=d_model, d_out=d_model, d_dict=d_tc,
            activation=activation, k=int(k) if k is not None else None, topk_signed=activation == "topk",
            skip="W_skip" in tensors,
            extra={"source_format": "circuit-tracer", "source": str(f), "feature_input_hook": hook_in,
                   "feature_output_hook": hook_out, "input_space": site_in.space},
        )
        dicts[(layer, "mlp")] = Dictionary.from_tensors(dcfg, tensors, source=str(f))
    return DictionarySet(dicts, model_name=str(cfg.get("model_name", "")))


def write_circuit_tracer(ds: DictionarySet, out_dir: Path, model_name: str | None = None,
                         feature_input_hook: str = "mlp.hook_in", feature_output_hook: str = "mlp.hook_out") -> Path:
    """Write the set's transcoders (layers 0..L−1, all required) as a circuit-tracer transcoder set.

    circuit-tracer's TopK keeps negative pre-activations among the top k; a TopK transcoder trained
    here (positive-only) is written as TopK and computes the same function whenever its k-th largest
    pre-activation is positive, which is the usual case — reading it back yields ``topk_signed=True``.
    """
    tcs = {layer: d for (layer, site), d in ds if site == "mlp"}
    if not tcs:
        raise ValueError("the dictionary set has no transcoders (site 'mlp') to write")
    missing = sorted(set(range(max(tcs) + 1)) - set(tcs))
    if missing:
        raise ValueError(f"a circuit-tracer transcoder set needs every layer 0..{max(tcs)}; missing {missing}")
    activations = {d.cfg.activation for d in tcs.values()}
    ks = {d.cfg.k for d in tcs.values()}
    if len(activations) != 1 or len(ks) != 1:
        raise ValueError(f"circuit-tracer sets share one activation and k; got {activations} and {ks}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    activation = activations.pop()
    cfg: dict[str, Any] = {"model_kind": "transcoder_set", "model_name": model_name or ds.model_name,
                           "feature_input_hook": feature_input_hook, "feature_output_hook": feature_output_hook}
    if activation in ("relu", "topk"):
        cfg["activation"] = activation
    if activation == "topk":
        cfg["k"] = int(ks.pop())  # type: ignore[arg-type]
    (out_dir / CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))
    for layer, d in sorted(tcs.items()):
        t = d.tensors()
        w = {k: t[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
        if "threshold" in t:
            w["activation_function.threshold"] = t["threshold"]
        if "W_skip" in t:
            w["W_skip"] = t["W_skip"]
        if activation == "topk":
            w["k"] = torch.tensor(int(d.cfg.k))  # type: ignore[arg-type]
        save_file(w, str(out_dir / f"layer_{layer}.safetensors"))
    return out_dir
