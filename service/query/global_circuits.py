"""Corpus-level (global) circuits: the aggregated feature -> feature graph of one corpus.

Aggregates are folded in exactly once per stored graph by the corpus' folder (``workers/store/aggregates.py``;
the pipeline folds every ``ATLAS_PIPELINE_FOLD_EVERY`` graphs and once more when the corpus is done, so
while a job is ``aggregating`` or running they cover the graphs folded so far):
``(:Feature)-[:AGG {corpus, sum_w, sum_abs_w, n}]->(:Feature)`` sums the signed direct effects of every
source-instance -> target-instance edge of the corpus' graphs, and
``(:Feature)-[:OCCURS {corpus, n, sum_act, n_graphs}]->(:Corpus)`` sums the source feature's activations
over every instance in the corpus' graphs.

Normalisation (DESIGN.md §2, "normalise by source activation mass"):

    norm_w(s -> t; C) = AGG(s, t, C).sum_w / OCCURS(s, C).sum_act

i.e. the summed signed direct effect of s on t, divided by the summed activation of s over all its
instances in corpus C (whether or not they had an edge to t): the expected direct effect on t per unit of
s's activation in that corpus. It is null when s's activation mass is 0. With ``corpus_id=None`` the sums
run over every corpus: ``Σ_C sum_w / Σ_C sum_act``.

Weight-level virtual weights ``[:VW {w, dictionary_set}]`` (``workers/analysis/virtual_weights.py``) are
read by :func:`virtual_weight_neighbours`; how they were computed (the corpus whose dataset-average norm scale
they use, per layer) by :func:`virtual_weight_provenance`.
"""

from __future__ import annotations

import json
from typing import Literal

from neo4j import Driver

Direction = Literal["upstream", "downstream"]
RankBy = Literal["norm_w", "sum_abs_w", "n"]

# Upstream: AGG edges into the feature, each normalised by its own source's activation mass; downstream: out
# of it, all normalised by the feature's own mass, read once (not once per neighbour: hot features have
# hundreds). AGG edges join features only, so the far end needs no label check. PROFILEd on the 5M-edge bench
# (bench/README.md): the per-neighbour OCCURS lookups are most of an upstream read's cost.
_NEIGHBOURS = {
    "upstream": """
MATCH (f:Feature {fkey: $fkey})<-[a:AGG]-(other)
WHERE $corpus_id IS NULL OR a.corpus = $corpus_id
WITH other, sum(a.sum_w) AS sum_w, sum(a.sum_abs_w) AS sum_abs_w, sum(a.n) AS n
CALL (other) {
  OPTIONAL MATCH (other)-[o:OCCURS]->()
  WHERE $corpus_id IS NULL OR o.corpus = $corpus_id
  RETURN sum(o.sum_act) AS mass
}
""",
    "downstream": """
MATCH (f:Feature {fkey: $fkey})
CALL (f) {
  OPTIONAL MATCH (f)-[o:OCCURS]->()
  WHERE $corpus_id IS NULL OR o.corpus = $corpus_id
  RETURN sum(o.sum_act) AS mass
}
MATCH (f)-[a:AGG]->(other)
WHERE $corpus_id IS NULL OR a.corpus = $corpus_id
WITH other, mass, sum(a.sum_w) AS sum_w, sum(a.sum_abs_w) AS sum_abs_w, sum(a.n) AS n
""",
}
_NEIGHBOURS_TAIL = """
WITH other, sum_w, sum_abs_w, n, mass, CASE WHEN mass <> 0 THEN sum_w / mass ELSE null END AS norm_w
WITH other, sum_w, sum_abs_w, n, mass, norm_w,
     CASE $rank_by WHEN 'norm_w' THEN coalesce(abs(norm_w), -1.0)
                   WHEN 'n' THEN toFloat(n) ELSE sum_abs_w END AS score
RETURN other.fkey AS fkey, other.dictionary AS dictionary, other.index AS index, sum_w, sum_abs_w, n,
       mass AS source_activation_mass, norm_w
ORDER BY score DESC, fkey ASC
SKIP $offset LIMIT $limit
"""


def aggregate_neighbours(driver: Driver, fkey: str, corpus_id: str | None, direction: Direction = "upstream", *,
                         rank_by: RankBy = "norm_w", offset: int = 0, limit: int = 20,
                         database: str | None = None) -> list[dict]:
    """Strongest corpus-aggregated neighbours of a feature, ranked by ``|norm_w|`` (default), ``sum_abs_w``
    or ``n`` descending, ties by fkey. ``source_activation_mass`` is the normaliser (module docstring)."""
    if direction not in _NEIGHBOURS:
        raise ValueError(f"direction must be 'upstream' or 'downstream', not {direction!r}")
    if rank_by not in ("norm_w", "sum_abs_w", "n"):
        raise ValueError(f"rank_by must be norm_w, sum_abs_w or n, not {rank_by!r}")
    records, _, _ = driver.execute_query(
        _NEIGHBOURS[direction] + _NEIGHBOURS_TAIL, fkey=fkey, corpus_id=corpus_id, rank_by=rank_by,
        offset=int(offset), limit=int(limit), database_=database, routing_="r",
    )
    return [dict(r) for r in records]


def aggregate_edge(driver: Driver, source: str, target: str, corpus_id: str | None, *,
                   database: str | None = None) -> dict | None:
    """The aggregate of one feature pair (None when the corpus never had an edge between them)."""
    records, _, _ = driver.execute_query(
        """
        MATCH (s:Feature {fkey: $source})-[a:AGG]->(t:Feature {fkey: $target})
        WHERE $corpus_id IS NULL OR a.corpus = $corpus_id
        WITH s, sum(a.sum_w) AS sum_w, sum(a.sum_abs_w) AS sum_abs_w, sum(a.n) AS n, count(a) AS k
        WHERE k > 0
        OPTIONAL MATCH (s)-[o:OCCURS]->(:Corpus) WHERE $corpus_id IS NULL OR o.corpus = $corpus_id
        WITH sum_w, sum_abs_w, n, sum(o.sum_act) AS mass
        RETURN sum_w, sum_abs_w, n, mass AS source_activation_mass,
               CASE WHEN mass <> 0 THEN sum_w / mass ELSE null END AS norm_w
        """,
        source=source, target=target, corpus_id=corpus_id, database_=database, routing_="r",
    )
    return dict(records[0]) if records else None


def virtual_weight_neighbours(driver: Driver, fkey: str, direction: Direction = "upstream", *, limit: int = 20,
                              database: str | None = None) -> list[dict]:
    """Weight-level neighbours (stored top-k VW edges), ranked by |w| desc, ties by fkey."""
    pattern = "(f:Feature {fkey: $fkey})<-[v:VW]-(o:Feature)" if direction == "upstream" else \
        "(f:Feature {fkey: $fkey})-[v:VW]->(o:Feature)"
    records, _, _ = driver.execute_query(
        f"MATCH {pattern} RETURN o.fkey AS fkey, v.w AS w ORDER BY abs(v.w) DESC, fkey ASC LIMIT $limit",
        fkey=fkey, limit=int(limit), database_=database, routing_="r",
    )
    return [dict(r) for r in records]


def virtual_weight_provenance(driver: Driver, dictionary_set_id: str, *, database: str | None = None) -> dict | None:
    """How the dictionary set's stored VW edges were computed (None when none are stored): the
    ``(:VirtualWeights)`` node the job writes with its VW edges."""
    rows, _, _ = driver.execute_query(
        "MATCH (p:VirtualWeights {dictionary_set: $d}) RETURN p.n_edges AS n_edges, p.provenance AS provenance, "
        "p.computed_at AS computed_at", d=dictionary_set_id, database_=database, routing_="r")
    if not rows:
        return None
    r = rows[0]
    return {"dictionary_set_id": dictionary_set_id, "n_edges": r["n_edges"], "computed_at": r["computed_at"],
            **json.loads(r["provenance"] or "{}")}
