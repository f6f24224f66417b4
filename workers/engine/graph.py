"""The result object: nodes, sparse direct-effect adjacency, targets, provenance; saved without pickle
(safetensors for tensors + JSON for everything else) and exported as Neuronpedia graph JSON.

Adjacency convention: ``adjacency[t, s]`` is the direct effect of source s on target t (row = target,
column = source), a sparse CSR tensor [N, N] with int64 indices and fp32 values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

ENGINE_VERSION = "0.2.0"  # 0.2: explicit adjoint backward by default (edges equal 0.1 to float round-off)


@dataclass
class TargetInfo:
    node_id: str
    label: str
    tensor: str
    pos: int
    weight: float
    value: float  # the target's clean value (vector · tensor[pos] + offset)
    token_prob: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Graph:
    """One attribution graph.

    Per node (length N): ``node_ids``, ``kinds``, ``layer`` (emb/pos −1, logits/targets n_layers, bias its
    group's layer or −1), ``site`` ("attn"/"mlp"/""), ``pos`` (−1 for bias), ``feature`` (−1 unless a
    feature), ``activation`` (feature activation a_s; 1 for other leaves, whose edges already carry
    their value, including ``unexp`` leaves: the active features a node budget left unexpanded at one
    (site, position), summed), ``value`` (rows: the attributed quantity — a feature's pre-activation or a target's
    value; leaves: NaN), ``bias`` (rows: the bias leaf's total contribution), ``influence`` (after pruning).
    """

    node_ids: list[str]
    kinds: list[str]
    layer: torch.Tensor
    site: list[str]
    pos: torch.Tensor
    feature: torch.Tensor
    activation: torch.Tensor
    value: torch.Tensor
    adjacency: torch.Tensor  # sparse CSR [N, N]
    targets: list[TargetInfo]
    tokens: list[int]
    prompt: str = ""
    token_strings: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    influence: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self._index = {n: i for i, n in enumerate(self.node_ids)}

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._index

    @property
    def n_nodes(self) -> int:
        return len(self.node_ids)

    def index(self, node_id: str) -> int:
        try:
            return self._index[node_id]
        except KeyError:
            raise KeyError(f"node {node_id!r} is not in this graph") from None

    def edge(self, target: str, source: str) -> float:
        """Direct effect of ``source`` on ``target`` (0 if not stored)."""
        t, s = self.index(target), self.index(source)
        row = self.row(t)
        hit = (row[0] == s).nonzero()
        return float(row[1][hit[0, 0]]) if hit.numel() else 0.0

    def row(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(source indices, weights) of row t."""
        crow = self.adjacency.crow_indices()
        a, b = int(crow[t]), int(crow[t + 1])
        return self.adjacency.col_indices()[a:b], self.adjacency.values()[a:b]

    def dense(self) -> torch.Tensor:
        """Dense [N, N] copy: only for small graphs and tests."""
        return self.adjacency.to_dense()

    def nodes_of_kind(self, kind: str) -> torch.Tensor:
        return torch.tensor([i for i, k in enumerate(self.kinds) if k == kind], dtype=torch.long)

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write ``path/graph.safetensors`` and ``path/graph.json`` (no pickle)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {
            "layer": self.layer.contiguous(),
            "pos": self.pos.contiguous(),
            "feature": self.feature.contiguous(),
            "activation": self.activation.contiguous(),
            "value": self.value.contiguous(),
            "adj_crow": self.adjacency.crow_indices().contiguous(),
            "adj_col": self.adjacency.col_indices().contiguous(),
            "adj_val": self.adjacency.values().contiguous(),
        }
        if self.influence is not None:
            tensors["influence"] = self.influence.contiguous()
        save_file(tensors, str(path / "graph.safetensors"))
        meta = {
            "format": "circuit-atlas-graph",
            "engine_version": ENGINE_VERSION,
            "node_ids": self.node_ids,
            "kinds": self.kinds,
            "site": self.site,
            "targets": [t.to_dict() for t in self.targets],
            "tokens": self.tokens,
            "prompt": self.prompt,
            "token_strings": self.token_strings,
            "provenance": self.provenance,
        }
        (path / "graph.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        path = Path(path)
        meta = json.loads((path / "graph.json").read_text())
        if meta.get("format") != "circuit-atlas-graph":
            raise ValueError(f"{path} does not hold a circuit-atlas graph (graph.json has no matching 'format')")
        t = load_file(str(path / "graph.safetensors"))
        n = len(meta["node_ids"])
        adj = torch.sparse_csr_tensor(t["adj_crow"], t["adj_col"], t["adj_val"], size=(n, n))
        return cls(
            node_ids=meta["node_ids"],
            kinds=meta["kinds"],
            layer=t["layer"],
            site=meta["site"],
            pos=t["pos"],
            feature=t["feature"],
            activation=t["activation"],
            value=t["value"],
            adjacency=adj,
            targets=[TargetInfo(**d) for d in meta["targets"]],
            tokens=meta["tokens"],
            prompt=meta["prompt"],
            token_strings=meta["token_strings"],
            provenance=meta["provenance"],
            influence=t.get("influence"),
        )

    # -- Neuronpedia --------------------------------------------------------------------------------
    def to_neuronpedia(self, slug: str = "circuit-atlas", keep: torch.Tensor | None = None,
                       node_threshold: float | None = None) -> dict:
        """Neuronpedia graph JSON, schema_version 1 (``workers/neuronpedia.py``, the one exporter). ``keep`` [N]
        bool restricts to a pruned node set."""
        from workers.neuronpedia import export, transcoder_list
        from workers.vocabulary.ids import site_name
        from workers.vocabulary.kinds import STORE_KIND, TOKEN_KINDS

        n_layers = int(self.provenance.get("n_layers", int(self.layer.max()) if self.n_nodes else 0))
        keep_mask = torch.ones(self.n_nodes, dtype=torch.bool) if keep is None else keep
        tokens = self.token_strings or [str(t) for t in self.tokens]
        kept = keep_mask.nonzero().flatten().tolist()
        layer, pos, feature = self.layer.tolist(), self.pos.tolist(), self.feature.tolist()
        activation = self.activation.tolist()
        influence = None if self.influence is None else self.influence.tolist()
        kinds = [STORE_KIND[k] for k in self.kinds]
        nodes = [{
            "node_id": self.node_ids[i], "kind": kinds[i], "layer": layer[i], "pos": pos[i], "feature": feature[i],
            "activation": activation[i], "influence": None if influence is None else influence[i],
            "token": tokens[pos[i]] if kinds[i] in TOKEN_KINDS and 0 <= pos[i] < len(tokens) else None,
        } for i in kept]
        adj = self.adjacency.to_sparse_coo().coalesce()
        (rows, cols), vals = adj.indices(), adj.values()
        m = keep_mask[rows] & keep_mask[cols]
        links = [(self.node_ids[s], self.node_ids[t], w)
                 for t, s, w in zip(rows[m].tolist(), cols[m].tolist(), vals[m].tolist(), strict=True)]
        dictionaries = [site_name(layer[i], self.site[i]) for i in kept if self.kinds[i] == "feat"]
        return export(
            nodes, links, slug=slug, scan=str(self.provenance.get("model_name", "")), prompt=self.prompt,
            prompt_tokens=tokens, n_layers=n_layers, node_threshold=node_threshold,
            targets={t.node_id: t.token_prob for t in self.targets},
            transcoder_list=transcoder_list(str(self.provenance.get("dictionary_hash", "")), dictionaries),
            info={"generator": {"name": "circuit-atlas", "version": ENGINE_VERSION}, "provenance": self.provenance},
        )
