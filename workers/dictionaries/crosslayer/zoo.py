"""The zoo's cross-layer transcoder: a CLT for gpt2-4l, trained on the zoo's dictionary text with the
recipe of its per-layer transcoders (``ZOO_MLP``: 256 features per layer, TopK 16, 600 steps), and
compared with that per-layer set at equal total width and equal L0.

It is a separate cached artefact, ``<zoo_dir>/clt/<key>/``, built on demand from a finished zoo: the key
hashes the zoo's build key, this package's sources and the recipe, so editing CLT code rebuilds only
this (about two CPU minutes), never the zoo (whose per-layer dictionaries do not depend on it).

``<key>/`` holds the native dictionary set (the zoo's attention SAEs + the CLT: the full replacement
model), ``clt.report.json|png`` (training history) and ``report.json``: held-out explained variance and
L0 of the CLT and of the per-layer transcoders on the same tokens, and CE with each spliced in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from workers.cached_build import build_once
from workers.dictionaries.activations import collect_activations
from workers.dictionaries.crosslayer.module import CLTDictionarySet
from workers.dictionaries.crosslayer.training import clt_reconstruction_stats, clt_spliced, train_clt
from workers.dictionaries.formats import load_dictionary_set, save_dictionary_set
from workers.dictionaries.metrics import cross_entropy, reconstruction_stats, spliced
from workers.dictionaries.training import ZOO_MAX_TOKENS, ZOO_MLP, write_report
from workers.zoo.build import BuildSpec, ZooPaths, dictionary_token_batches, ensure_zoo
from workers.zoo.corpus import train_examples
from workers.zoo.tokenizer import build_tokenizer

ZOO_CLT = replace(ZOO_MLP, prune_dead=False)  # same width per layer, k, steps, batch and lr
PACKAGE = Path(__file__).resolve().parent


def clt_key(zoo: ZooPaths) -> str:
    h = hashlib.sha256(zoo.root.name.encode())
    for p in sorted(PACKAGE.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(json.dumps(asdict(ZOO_CLT), sort_keys=True).encode())
    return h.hexdigest()[:16]


def ensure_zoo_clt(zoo: ZooPaths | None = None, progress: bool = False) -> Path:
    """The directory of the zoo's CLT set (module doc), training it first if this key has none."""
    zoo = zoo or ensure_zoo(progress=progress)
    if zoo.dictionaries is None:
        raise RuntimeError(f"the zoo at {zoo.root} has no per-layer dictionaries to compare a CLT with")
    return build_once(zoo.root.parent / "clt", clt_key(zoo), lambda partial: train_zoo_clt(zoo, partial, progress=progress))


def train_zoo_clt(zoo: ZooPaths, out_dir: Path, progress: bool = False) -> dict:
    """Train the CLT on the zoo's dictionary text (the per-layer set's tokens and held-out split), save the
    set and the reports in ``out_dir``; returns ``report.json``'s content."""
    from transformers import AutoModelForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and machine-independent, as the zoo build
    try:
        spec = BuildSpec()
        model = AutoModelForCausalLM.from_pretrained(str(zoo.models[spec.dictionary_model]),
                                                     dtype=torch.float32).eval()
        per_layer = load_dictionary_set(zoo.dictionaries, model=model)  # type: ignore[arg-type]
        batches = dictionary_token_batches(train_examples(spec.corpus), build_tokenizer().get_vocab(),
                                           spec.dictionary_batch_size, spec.dictionary_tokens)
        n_held = max(1, len(batches) // 10)  # the split train_zoo_dictionaries used
        train, held = batches[:-n_held], batches[-n_held:]
        L = model.config.num_hidden_layers
        sites = [(i, "mlp") for i in range(L)]
        acts = collect_activations(model, train, sites, max_tokens=ZOO_MAX_TOKENS, progress=progress)
        held_acts = collect_activations(model, held, sites)
        clt, hist = train_clt([acts[s][0] for s in sites], [acts[s][1] for s in sites], ZOO_CLT,
                              input_site="mlp_in", extra={"model_name": str(zoo.models[spec.dictionary_model].name)},
                              progress=progress)
        Xh, Yh = [held_acts[s][0] for s in sites], [held_acts[s][1] for s in sites]
        clt_stats = clt_reconstruction_stats(clt, Xh, Yh)
        sse = sst = 0.0
        pl: dict = {"explained_variance_per_layer": [], "l0_per_layer": [],
                    "total_width": sum(per_layer[s].cfg.d_dict for s in sites)}
        for s in sites:
            st = reconstruction_stats(per_layer[s], *held_acts[s])
            y = held_acts[s][1]
            tot = float(((y - y.mean(0)) ** 2).sum())
            sse, sst = sse + (1 - st.explained_variance) * tot, sst + tot
            pl["explained_variance_per_layer"].append(st.explained_variance)
            pl["l0_per_layer"].append(st.l0)
        pl["explained_variance"] = 1 - sse / sst
        pl["l0"] = sum(pl["l0_per_layer"]) / L
        clean = cross_entropy(model, held)
        with spliced(model, per_layer, sites):
            ce_pl = cross_entropy(model, held)
        with clt_spliced(model, clt):
            ce_clt = cross_entropy(model, held)
        attn = {k: d for k, d in per_layer if k[1] == "attn"}
        ds = CLTDictionarySet(attn, model_name=per_layer.model_name, model_hash=per_layer.model_hash, clt=clt)
        save_dictionary_set(ds, out_dir)
        write_report(clt, hist, clt_stats, out_dir)  # type: ignore[arg-type]
        report = {
            "zoo": zoo.root.name, "train_tokens": int(acts[sites[0]][0].shape[0]),
            "train_seconds": hist.seconds, "train_config": asdict(ZOO_CLT),
            "clt": {**clt_stats, "total_width": clt.cfg.d_dict * L},
            "per_layer_transcoders": pl,
            "cross_entropy_mlps_spliced": {"clean": clean, "clt": ce_clt, "per_layer_transcoders": ce_pl},
            "content_hash": ds.content_hash(),
        }
        (out_dir / "report.json").write_text(json.dumps(report, indent=2))
        return report
    finally:
        torch.set_num_threads(threads)
