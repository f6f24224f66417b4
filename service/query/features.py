"""Feature pages: where a feature fires, what feeds it and what it feeds, how often it is in circuits.

A feature is the global ``(:Feature {fkey})`` (``workers/store/records.py: feature_key``); its instances are
the ``(:Node:Feat {fkey})`` of complete graphs (linked by the indexed property, not a relationship).
"""

from __future__ import annotations

from neo4j import Driver

from service.query.global_circuits import aggregate_neighbours

# Hot features have tens of thousands of instances. Step 1 finds the activation of the (offset+limit)-th
# instance from the (fkey, activation) index alone (migrations/0011), touching graphs lazily in activation
# order; step 2 reads only the instances at or above it, sorts them by (activation desc, uid) and adds context.
_FLOOR = """
MATCH (n:Node) USING INDEX n:Node(fkey, activation)
WHERE n.fkey = $fkey AND n.activation IS NOT NULL
MATCH (g:Graph {graph_id: n.graph_id})
WHERE g.status = 'complete' AND ($corpus_id IS NULL OR g.corpus_id = $corpus_id)
WITH n ORDER BY n.activation DESC LIMIT $k
RETURN min(n.activation) AS floor, count(n) AS n
"""

# Top instances by activation (ties by uid), each with its prompt's tokens around the position, read from
# the graph's token-embedding nodes (they carry the token string; positions without one are absent).
_TOP = """
MATCH (n:Node) USING INDEX n:Node(fkey, activation)
WHERE n.fkey = $fkey AND n.activation >= $floor
MATCH (g:Graph {graph_id: n.graph_id})
WHERE g.status = 'complete' AND ($corpus_id IS NULL OR g.corpus_id = $corpus_id)
WITH n, g ORDER BY n.activation DESC, n.uid ASC SKIP $offset LIMIT $limit
CALL (n) {
  OPTIONAL MATCH (e:Node {graph_id: n.graph_id, kind: 'embedding'})
  WHERE e.pos >= n.pos - $before AND e.pos <= n.pos + $after
  WITH e ORDER BY e.pos
  RETURN collect(e {.pos, .token}) AS context
}
RETURN n.graph_id AS graph_id, g.corpus_id AS corpus_id, g.prompt_id AS prompt_id, n.node_id AS node_id,
       n.pos AS pos, n.activation AS activation, n.influence AS influence, context
"""

_FEATURE = "MATCH (f:Feature {fkey: $fkey}) RETURN f {.fkey, .dictionary, .index, .dictionary_set} AS f"

# Circuit frequency: per corpus, the graphs the feature appears in over the corpus' complete graphs.
_FREQUENCY = """
MATCH (f:Feature {fkey: $fkey})-[o:OCCURS]->(c:Corpus)
WHERE $corpus_id IS NULL OR o.corpus = $corpus_id
WITH o, c, COUNT { MATCH (g:Graph {corpus_id: c.corpus_id}) WHERE g.status = 'complete' } AS n_complete
RETURN o.corpus AS corpus_id, o.n AS n_instances, o.n_graphs AS n_graphs, n_complete AS corpus_graphs,
       o.sum_act AS sum_activation,
       CASE WHEN n_complete > 0 THEN toFloat(o.n_graphs) / n_complete ELSE null END AS graph_fraction
ORDER BY corpus_id
"""


class FeatureNotFound(LookupError):
    """No (:Feature) with this fkey."""


def top_activations(driver: Driver, fkey: str, corpus_id: str | None = None, *, offset: int = 0, limit: int = 10,
                    before: int = 4, after: int = 1, database: str | None = None) -> list[dict]:
    """Instances of the feature in complete graphs, by activation desc (ties by uid), with token context
    ``[pos - before, pos + after]``. Instances without an activation are not listed."""
    if limit <= 0:
        return []
    floor, _, _ = driver.execute_query(_FLOOR, fkey=fkey, corpus_id=corpus_id, k=int(offset) + int(limit),
                                       database_=database, routing_="r")
    if floor[0]["floor"] is None:
        return []
    records, _, _ = driver.execute_query(
        _TOP, fkey=fkey, corpus_id=corpus_id, floor=floor[0]["floor"], offset=int(offset), limit=int(limit),
        before=int(before), after=int(after), database_=database, routing_="r",
    )
    return [dict(r) for r in records]


def circuit_frequency(driver: Driver, fkey: str, corpus_id: str | None = None, *,
                      database: str | None = None) -> list[dict]:
    records, _, _ = driver.execute_query(_FREQUENCY, fkey=fkey, corpus_id=corpus_id, database_=database,
                                         routing_="r")
    return [dict(r) for r in records]


def feature_page(driver: Driver, fkey: str, corpus_id: str | None = None, *, top: int = 10, neighbours: int = 10,
                 before: int = 4, after: int = 1, database: str | None = None) -> dict:
    """Everything the feature page shows, in one dict. Raises FeatureNotFound."""
    records, _, _ = driver.execute_query(_FEATURE, fkey=fkey, database_=database, routing_="r")
    if not records:
        raise FeatureNotFound(f"no feature {fkey!r}; feature keys look like '<dictionary_set>/<dictionary>#<index>'")
    return {
        "feature": records[0]["f"],
        "corpus_id": corpus_id,
        "top_activations": top_activations(driver, fkey, corpus_id, limit=top, before=before, after=after,
                                           database=database),
        "upstream": aggregate_neighbours(driver, fkey, corpus_id, "upstream", limit=neighbours, database=database),
        "downstream": aggregate_neighbours(driver, fkey, corpus_id, "downstream", limit=neighbours,
                                           database=database),
        "frequency": circuit_frequency(driver, fkey, corpus_id, database=database),
    }
