"""The corpus-done step (cpu queue): once the job's counter says every prompt is final, summarise the
corpus and normalise its aggregates. Idempotent: it recomputes from what is stored."""

from __future__ import annotations

import time
from typing import Any

from neo4j import Driver


def summarise_corpus(driver: Driver, corpus_id: str, database: str | None = None) -> dict[str, Any]:
    """Per AGG edge of the corpus: mean_w = sum_w / n and share of the source's total |w| (the corpus-level
    "which features feed F" ranking); on the Corpus: counts of graphs, nodes, edges and aggregate pairs."""
    # Per source feature, in batches: a corpus can hold millions of AGG edges, beyond one transaction's memory;
    # the values are recomputed from the sums, so a batch repeated after a crash changes nothing.
    with driver.session(database=database) as session:
        session.run(
            """
            MATCH (a:Feature)-[:AGG {corpus: $c}]->()
            WITH DISTINCT a
            CALL (a) {
              MATCH (a)-[e:AGG]->() WHERE e.corpus = $c
              WITH collect(e) AS es, sum(e.sum_abs_w) AS total
              UNWIND es AS e
              SET e.mean_w = e.sum_w / e.n, e.share_abs_w = CASE WHEN total > 0 THEN e.sum_abs_w / total ELSE 0.0 END
            } IN TRANSACTIONS OF 500 ROWS
            """, c=corpus_id).consume()
    rec = driver.execute_query(
        """
        MATCH (c:Corpus {corpus_id: $c})
        OPTIONAL MATCH (g:Graph {corpus_id: $c}) WHERE g.status = 'complete'
        WITH c, count(g) AS graphs, sum(g.n_nodes) AS nodes, sum(g.n_edges) AS edges
        CALL (c) { MATCH ()-[e:AGG {corpus: c.corpus_id}]->() RETURN count(e) AS agg }
        SET c.n_graphs = graphs, c.n_nodes = nodes, c.n_edges = edges, c.n_agg = agg, c.summarised_at = $now
        RETURN graphs, nodes, edges, agg
        """, c=corpus_id, now=time.time(), database_=database).records
    return dict(rec[0]) if rec else {}
