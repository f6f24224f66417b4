"""Compare our engine's edges with circuit-tracer's on the 16-token benchmark prompt.

Needs the graph dumped by ``run.py --dump-npz`` (circuit-tracer venv); this script runs in the MAIN
venv::

    ~/.cache/circuit-atlas/venv/bin/python bench/circuit_tracer_ref/compare_edges.py [--npz PATH]

With ``--clt`` (issue #19) the cross-layer transcoder of ``clt_dictionaries/`` against circuit-tracer's graph
of ``clt_ct/`` (``run.py --clt --dump-npz``): a CLT feature is one node in both, whatever layers it writes to.
``--clt-resid``: the CLT reading ``hook_resid_mid`` (``clt_resid_dictionaries/`` against ``clt_resid_ct/``'s
graph, ``run.py --clt-resid --dump-npz``).

Both graphs are matched by node identity (feature = (layer, pos, index), error = (layer, pos), token
embedding = pos, logit = token id) and every edge that circuit-tracer's graph can express is compared:
targets = features and logits, sources = features, MLP error nodes and token embeddings. circuit-tracer
has no positional-embedding or bias sources and zeroes the BOS position's features and errors; edges
from sources it lacks are reported separately, not compared.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

# Import ``workers`` from the checkout this script lives in, not wherever the editable install points.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DEFAULT_BENCH_DIR = Path.home() / ".cache" / "circuit-atlas" / "bench" / "gpt2-4l-d128"


def circuit_tracer_node_ids(npz: np.lib.npyio.NpzFile) -> list[str]:
    """Our node ids for circuit-tracer's node order: features, errors [layer][pos], tokens [pos], logits."""
    from workers.vocabulary import ids

    n_layers = int(npz["n_layers"])
    n_pos = len(npz["input_tokens"])
    out = [ids.feat_id(int(layer), "mlp", int(pos), int(f)) for layer, pos, f in npz["active_features"]]
    out += [ids.err_id(layer, "mlp", pos) for layer in range(n_layers) for pos in range(n_pos)]
    out += [ids.emb_id(pos) for pos in range(n_pos)]
    out += [ids.logit_id(n_pos - 1, int(t)) for t in npz["logit_token_ids"]]
    return out


def compare(bench_dir: Path, npz_path: Path, dictionaries: str = "dictionaries") -> dict:
    from transformers import AutoModelForCausalLM

    from workers.dictionaries.formats import load_dictionary_set
    from workers.engine.attribution import attribute
    from workers.engine.linearise import Linearised

    if not npz_path.exists():
        raise SystemExit(f"{npz_path} is missing: run bench/circuit_tracer_ref/run.py --dump-npz with the "
                         "circuit-tracer venv first")
    ct = np.load(npz_path)
    prompts = json.loads((bench_dir / "prompts.json").read_text())
    if ct["input_tokens"].tolist() != prompts["16"]:
        raise SystemExit(f"{npz_path} was made from other tokens than {bench_dir / 'prompts.json'}; "
                         "rebuild the model and re-run run.py --dump-npz")

    model = AutoModelForCausalLM.from_pretrained(bench_dir / "model", dtype=torch.float32).eval()
    lin = Linearised(model, load_dictionary_set(bench_dir / dictionaries, model))
    g = attribute(lin, torch.tensor(prompts["16"]))
    ours = g.dense()  # [N, N], 16 tokens: small

    ct_ids = circuit_tracer_node_ids(ct)
    A_ct = torch.from_numpy(ct["adjacency"])
    n_feat = len(ct["active_features"])
    n_logit = len(ct["logit_token_ids"])
    ct_targets = list(range(n_feat)) + list(range(len(ct_ids) - n_logit, len(ct_ids)))
    ct_sources = list(range(len(ct_ids) - n_logit))

    ct_feats = {i for i in ct_ids[:n_feat]}
    our_feats = {n for n in g.node_ids if n.startswith("feat:")}
    ct_logits = set(ct_ids[-n_logit:])
    our_logits = {n for n in g.node_ids if n.startswith("logit:")}

    # Map circuit-tracer nodes to ours. Error nodes at the BOS position are left out: circuit-tracer
    # zeroes their vectors (the BOS MLP output becomes an unattributed constant), so it has no edges
    # from them to compare with.
    idx = {n: i for i, n in enumerate(g.node_ids)}
    t_ct = [i for i in ct_targets if ct_ids[i] in idx]
    s_ct = [i for i in ct_sources if ct_ids[i] in idx and not (ct_ids[i].startswith("err:")
                                                                and ct_ids[i].endswith(":p0"))]
    bos_sources = [i for i in ct_sources if i not in s_ct and ct_ids[i] in idx]
    s_missing = [i for i in ct_sources if ct_ids[i] not in idx]
    a = A_ct[t_ct][:, s_ct]
    b = ours[[idx[ct_ids[i]] for i in t_ct]][:, [idx[ct_ids[i]] for i in s_ct]]
    rows = [idx[ct_ids[i]] for i in t_ct]
    diff = (a - b).abs()
    worst = int(diff.argmax())
    wt, ws = divmod(worst, diff.shape[1])

    # Weight our graph puts on sources circuit-tracer does not have (positional embeddings, biases).
    shared = {ct_ids[i] for i in ct_sources}
    extra_cols = [i for i, n in enumerate(g.node_ids) if n not in shared]
    extra = ours[rows][:, extra_cols]
    return {
        "npz": str(npz_path),
        "same_feature_nodes": ct_feats == our_feats,
        "n_features_ct": len(ct_feats), "n_features_ours": len(our_feats),
        "same_logit_targets": ct_logits == our_logits,
        "edges_compared": int(a.numel()),
        "max_abs_diff": float(diff.max()),
        "max_abs_edge": float(a.abs().max()),
        "rel_l2_diff": float((a - b).norm() / a.norm()),
        "worst_edge": {"target": ct_ids[t_ct[wt]], "source": ct_ids[s_ct[ws]],
                       "circuit_tracer": float(a[wt, ws]), "ours": float(b[wt, ws])},
        "bos_sources_left_out": [ct_ids[i] for i in bos_sources],
        "ct_weight_on_bos_sources": float(A_ct[ct_targets][:, bos_sources].abs().max()) if bos_sources else 0.0,
        "our_weight_on_bos_sources": float(ours[rows][:, [idx[ct_ids[i]] for i in bos_sources]].abs().max())
        if bos_sources else 0.0,
        "ct_sources_not_in_ours": [ct_ids[i] for i in s_missing],
        "ct_weight_on_those": float(A_ct[ct_targets][:, s_missing].abs().max()) if s_missing else 0.0,
        "our_sources_not_in_ct": sorted({g.node_ids[c].split(":")[0] for c in extra_cols
                                         if extra[:, extra_cols.index(c)].abs().max() > 0}),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench-dir", type=Path, default=DEFAULT_BENCH_DIR)
    ap.add_argument("--npz", type=Path, default=None,
                    help="circuit-tracer's graph (default: <bench-dir>/../ct_graph_16.npz, with --clt "
                         "<bench-dir>/../ct_clt_graph_16.npz, with --clt-resid <bench-dir>/../ct_clt_resid_graph_16.npz)")
    ap.add_argument("--clt", dest="clt", action="store_const", const="clt",
                    help="compare the cross-layer transcoder (clt_dictionaries/)")
    ap.add_argument("--clt-resid", dest="clt", action="store_const", const="clt_resid",
                    help="compare the cross-layer transcoder reading hook_resid_mid (clt_resid_dictionaries/)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    npz = args.npz or args.bench_dir.parent / (f"ct_{args.clt}_graph_16.npz" if args.clt else "ct_graph_16.npz")
    print(json.dumps(compare(args.bench_dir, npz, f"{args.clt}_dictionaries" if args.clt else "dictionaries"),
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
