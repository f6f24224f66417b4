"""circuit-tracer transcoder sets (``config.yaml`` plus one ``layer_{i}.safetensors`` per layer) and
cross-layer transcoders (``config.yaml`` plus ``W_enc_{i}`` / ``W_dec_{i}.safetensors`` per source layer).

``config.yaml``: ``model_kind: transcoder_set`` (or ``cross_layer_transcoder``: see below), ``model_name``,
``feature_input_hook`` / ``feature_output_hook`` (hook names without the ``blocks.{i}.`` prefix, e.g.
``mlp.hook_in`` / ``mlp.hook_out`` or ``ln2.hook_normalized`` / ``hook_mlp_out``), optional
``activation`` (relu | topk | jumprelu) and ``k``, optional ``transcoders:`` list of per-layer files
(local paths, relative to the directory; ``hf://`` URIs are refused offline), otherwise
``layer_0.safetensors`` … ``layer_{L−1}.safetensors``, every layer required.

Per file, rows = features (our orientation): ``W_enc`` [d_tc, d_model], ``W_dec`` [d_tc, d_model],
``b_enc`` [d_tc], ``b_dec`` [d_model], optional ``activation_function.threshold`` [d_tc] (JumpReLU:
``pre·(pre > θ)``), ``W_skip`` [d_model, d_model], ``k`` (scalar; TopK). circuit-tracer's TopK keeps the
k largest pre-activations whatever their sign, so TopK transcoders load with ``topk_signed=True``.

Cross-layer transcoders (``model_kind: cross_layer_transcoder``; circuit-tracer's ``load_clt`` and
``CrossLayerTranscoder.to_safetensors``), for every source layer i of 0..L−1:

- ``W_enc_{i}.safetensors``: ``W_enc_{i}`` [d_tc, d_model], ``b_enc_{i}`` [d_tc], ``b_dec_{i}`` [d_model]
  (the decoder bias of OUTPUT layer i, added once), optional ``threshold_{i}`` [d_tc] (JumpReLU
  ``pre·(pre > θ)``; all layers or none, else ReLU);
- ``W_dec_{i}.safetensors``: ``W_dec_{i}`` [d_tc, L − i, d_model] (writes to layers i..L−1).

``feature_input_hook`` ``hook_resid_mid`` (circuit-tracer's default), ``mlp.hook_in`` or
``ln2.hook_normalized``; ``feature_output_hook`` ``hook_mlp_out`` or ``mlp.hook_out``. Skip weights
(``W_skip*``) are ignored, as circuit-tracer's loader ignores them; any other tensor is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from workers.dictionaries.crosslayer.module import CLTConfig, CLTDictionarySet, CrossLayerTranscoder, clt_of
from workers.dictionaries.formats.hooks import clt_input_site, clt_output_hook_ok, parse_hook
from workers.dictionaries.formats.lazy import lazy_clt, lazy_dictionary, map_safetensors
from workers.dictionaries.formats.tensors_io import need, read_safetensors, take
from workers.dictionaries.modules import Dictionary, DictionaryConfig, DictionarySet

CONFIG = "config.yaml"
_LAYER_RE = re.compile(r"^layer_(\d+)\.safetensors$")
_CLT_ENC_RE = re.compile(r"^W_enc_(\d+)\.safetensors$")
# circuit-tracer's spelling of each CLT input site, for the writer
CLT_INPUT_HOOKS = {"resid_mid": "hook_resid_mid", "mlp_in": "mlp.hook_in", "normalized": "ln2.hook_normalized"}


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


def read_circuit_tracer(path: Path, lazy: bool = False) -> DictionarySet:
    """Read a transcoder set or CLT; ``lazy``: a transcoder set's matrices, a CLT's decoders, memory-mapped
    (``formats/lazy.py``)."""
    path = Path(path)
    cfg_path = path / CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(f"missing config file {cfg_path}")
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    kind = need(cfg, "model_kind", cfg_path)
    if kind == "cross_layer_transcoder":
        return _read_clt(path, cfg, cfg_path, lazy)
    if kind != "transcoder_set":
        raise ValueError(f"{cfg_path}: model_kind {kind!r} is not supported (transcoder_set or "
                         "cross_layer_transcoder)")
    hook_in, hook_out = need(cfg, "feature_input_hook", cfg_path), need(cfg, "feature_output_hook", cfg_path)
    activation_cfg = cfg.get("activation")
    dicts: dict[tuple[int, str], Dictionary] = {}
    for layer, f in enumerate(_layer_files(path, cfg, cfg_path)):
        site_in = parse_hook(f"blocks.{layer}.{hook_in}" if "blocks." not in hook_in else hook_in, "in")
        site_out = parse_hook(f"blocks.{layer}.{hook_out}" if "blocks." not in hook_out else hook_out, "out")
        if site_in.site != "mlp" or site_out.site != "mlp":
            raise ValueError(f"{cfg_path}: {hook_in!r} -> {hook_out!r} is not an MLP transcoder")
        t = map_safetensors(f) if lazy else read_safetensors(f)
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
        dicts[(layer, "mlp")] = (lazy_dictionary if lazy else Dictionary.from_tensors)(dcfg, tensors, source=str(f))
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


def _read_clt(path: Path, cfg: dict[str, Any], cfg_path: Path, lazy: bool = False) -> CLTDictionarySet:
    """A circuit-tracer cross-layer transcoder directory (module doc) -> a set holding the CLT."""
    hook_in, hook_out = need(cfg, "feature_input_hook", cfg_path), need(cfg, "feature_output_hook", cfg_path)
    input_site = clt_input_site(str(hook_in))
    if not clt_output_hook_ok(str(hook_out)):
        raise ValueError(f"{cfg_path}: feature_output_hook {hook_out!r} is not an MLP output (hook_mlp_out or "
                         "mlp.hook_out): a cross-layer transcoder replaces MLP outputs")
    layers = sorted(int(m.group(1)) for f in path.iterdir() if (m := _CLT_ENC_RE.match(f.name)))
    if not layers:
        raise FileNotFoundError(f"no W_enc_<i>.safetensors files in {path} (model_kind cross_layer_transcoder)")
    n_layers = max(layers) + 1
    missing = sorted(set(range(n_layers)) - set(layers))
    if missing:
        raise FileNotFoundError(f"{path}: encoder files W_enc_<i>.safetensors of source layers {missing} are missing; "
                                f"a cross-layer transcoder needs every layer 0..{n_layers - 1}")
    enc0 = path / "W_enc_0.safetensors"
    t0 = read_safetensors(enc0)
    d_dict, d_model = take(t0, "W_enc_0", enc0).shape
    jumprelu = "threshold_0" in t0
    if cfg.get("activation") == "jumprelu" and not jumprelu:
        raise ValueError(f"{cfg_path}: activation jumprelu needs tensor 'threshold_0' in {enc0}")
    per_layer: list[dict[str, torch.Tensor]] = []
    sources: list[str] = []
    ignored: list[str] = []
    for i in range(n_layers):
        fe, fd = path / f"W_enc_{i}.safetensors", path / f"W_dec_{i}.safetensors"
        te, td = read_safetensors(fe), (map_safetensors(fd) if lazy else read_safetensors(fd))
        t = {"W_enc": take(te, f"W_enc_{i}", fe, (d_dict, d_model)), "b_enc": take(te, f"b_enc_{i}", fe, (d_dict,)),
             "b_dec": take(te, f"b_dec_{i}", fe, (d_model,)),
             "W_dec": take(td, f"W_dec_{i}", fd, (d_dict, n_layers - i, d_model))}
        known = {f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}"}
        if jumprelu:
            t["threshold"] = take(te, f"threshold_{i}", fe, (d_dict,))
            known.add(f"threshold_{i}")
        elif f"threshold_{i}" in te:
            raise ValueError(f"{fe} has 'threshold_{i}' but {enc0} has no 'threshold_0': thresholds must be given "
                             "for every source layer or none")
        for f, have, own in ((fe, te, known), (fd, td, {f"W_dec_{i}"})):
            for key in sorted(set(have) - own):
                if key.startswith("W_skip"):
                    ignored.append(f"{f.name}:{key}")
                    continue
                raise ValueError(f"unexpected tensor {key!r} in {f}; a circuit-tracer CLT file holds "
                                 f"{sorted(own)} (and W_skip*, ignored)")
        per_layer.append(t)
        sources.append(f"{fe} + {fd.name}")
    ccfg = CLTConfig(n_layers=n_layers, d_model=int(d_model), d_dict=int(d_dict),
                     activation="jumprelu" if jumprelu else "relu", input_site=input_site,
                     extra={"source_format": "circuit-tracer", "source": str(path), "feature_input_hook": hook_in,
                            "feature_output_hook": hook_out, "ignored_tensors": ignored})
    clt = (lazy_clt if lazy else CrossLayerTranscoder.from_layer_tensors)(ccfg, per_layer, sources)
    return CLTDictionarySet({}, model_name=str(cfg.get("model_name", "")), clt=clt)


def write_circuit_tracer_clt(ds: DictionarySet, out_dir: Path, model_name: str | None = None,
                             feature_output_hook: str = "hook_mlp_out") -> Path:
    """Write the set's cross-layer transcoder in circuit-tracer's layout (module doc), readable by
    circuit-tracer 0.5.0's ``load_clt``. The input hook follows the CLT's ``input_site``. Refused: TopK
    (circuit-tracer's CLTs are ReLU or JumpReLU) and sets that also hold attention SAEs (the layout has
    no place for them)."""
    clt = clt_of(ds)
    if clt is None:
        raise ValueError("the dictionary set has no cross-layer transcoder to write")
    if ds.dictionaries:
        raise ValueError(f"a circuit-tracer CLT directory holds only the CLT; this set also has {[k for k, _ in ds]}")
    if clt.cfg.activation == "topk":
        raise ValueError("circuit-tracer's cross-layer transcoders are ReLU or JumpReLU; this CLT is TopK")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"model_kind": "cross_layer_transcoder", "model_name": model_name or ds.model_name,
           "feature_input_hook": CLT_INPUT_HOOKS[clt.cfg.input_site], "feature_output_hook": feature_output_hook}
    (out_dir / CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))
    for i in range(clt.n_layers):
        t = clt.layer_tensors(i)
        enc = {f"W_enc_{i}": t["W_enc"], f"b_enc_{i}": t["b_enc"], f"b_dec_{i}": t["b_dec"]}
        if "threshold" in t:
            enc[f"threshold_{i}"] = t["threshold"]
        save_file(enc, str(out_dir / f"W_enc_{i}.safetensors"))
        save_file({f"W_dec_{i}": t["W_dec"]}, str(out_dir / f"W_dec_{i}.safetensors"))
    return out_dir
