"""Feature pages: where a feature fires, what feeds it and what it feeds, how often it is in circuits.

A feature is the global ``(:Feature {fkey})`` (``workers/vocabulary/ids.py: feature_key``); its instances are
the ``(:Node:Feat {fkey})`` of complete graphs (linked by the indexed property, not a relationship).

Feature search (``search_features``) finds features by key or prefix, or by the token text they fire on
(the token of the embedding node at an instance's position), ranked, with keyset pagination.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from neo4j import Driver

from service.query.global_circuits import aggregate_neighbours
from workers.errors import InvalidInput, NotFound
from workers.pipeline.jobs import quiet_records
from workers.vocabulary.tensors import SITES

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
# the graph's token-embedding nodes (they carry the token string; positions without one are absent), and the
# same feature's activation at each of those positions in that graph (its other instances there, walked through
# the (graph_id, kind) index; null where the stored graph has none: inactive there, or pruned away).
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
  RETURN collect(e {.pos, .token}) AS tokens
}
CALL (n) {
  MATCH (m:Node {graph_id: n.graph_id, kind: 'feature'}) USING INDEX m:Node(graph_id, kind)
  WHERE m.fkey = n.fkey AND m.pos >= n.pos - $before AND m.pos <= n.pos + $after
  RETURN collect([m.pos, m.activation]) AS window
}
RETURN n.graph_id AS graph_id, g.corpus_id AS corpus_id, g.prompt_id AS prompt_id, n.node_id AS node_id,
       n.pos AS pos, n.activation AS activation, n.influence AS influence, tokens, window
"""

# Every stored activation of the feature in complete graphs (of the corpus), for its histogram.
_ACTIVATIONS = """
MATCH (n:Node) USING INDEX n:Node(fkey, activation)
WHERE n.fkey = $fkey AND n.activation IS NOT NULL
MATCH (g:Graph {graph_id: n.graph_id})
WHERE g.status = 'complete' AND ($corpus_id IS NULL OR g.corpus_id = $corpus_id)
RETURN collect(n.activation) AS a
"""

# Token positions of the corpus' complete graphs (their token-embedding nodes): the denominator of density.
_CORPUS_TOKENS = """
MATCH (g:Graph {corpus_id: $corpus_id}) WHERE g.status = 'complete'
RETURN sum(COUNT { MATCH (e:Node {graph_id: g.graph_id, kind: 'embedding'}) }) AS n
"""

_FEATURE = """MATCH (f:Feature {fkey: $fkey})
RETURN f {.fkey, .dictionary, .index, .dictionary_set, .label, note: f.label_note, label_by: f.label_by,
          label_at: CASE WHEN f.label IS NULL THEN null ELSE f.label_at END} AS f"""

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


class FeatureNotFound(NotFound):
    """No (:Feature) with this fkey."""


def top_activations(driver: Driver, fkey: str, corpus_id: str | None = None, *, offset: int = 0, limit: int = 10,
                    before: int = 8, after: int = 4, database: str | None = None) -> list[dict]:
    """Instances of the feature in complete graphs, by activation desc (ties by uid), with token context
    ``[pos - before, pos + after]``: each token with the feature's activation there in the same graph (None
    where the graph stores no instance). Instances without an activation are not listed."""
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
    out = []
    for r in records:
        row = dict(r)
        acts = dict(row.pop("window"))
        row["context"] = [{**t, "activation": acts.get(t["pos"])} for t in row.pop("tokens")]
        out.append(row)
    return out


def activation_histogram(driver: Driver, fkey: str, corpus_id: str | None = None, *, bins: int = 20,
                         database: str | None = None) -> dict:
    """How often and how strongly the feature fires: a histogram of its stored activations (``bins`` equal bins
    from the smallest to the largest) and, within one corpus, its density (instances per token position of the
    corpus' complete graphs). Counts what the graphs store: a pruned graph keeps only its influential features."""
    records, _, _ = driver.execute_query(_ACTIVATIONS, fkey=fkey, corpus_id=corpus_id, database_=database,
                                         routing_="r")
    acts = np.asarray(records[0]["a"], dtype=np.float64)
    n_tokens = None
    if corpus_id is not None:
        rows, _, _ = driver.execute_query(_CORPUS_TOKENS, corpus_id=corpus_id, database_=database, routing_="r")
        n_tokens = int(rows[0]["n"] or 0)
    counts, edges = np.histogram(acts, bins=bins) if acts.size else (np.zeros(0, dtype=int), np.zeros(0))
    return {
        "n_instances": int(acts.size), "n_tokens": n_tokens,
        "density": acts.size / n_tokens if n_tokens else None,
        "min": float(acts.min()) if acts.size else None, "max": float(acts.max()) if acts.size else None,
        "mean": float(acts.mean()) if acts.size else None,
        "bin_edges": [float(e) for e in edges], "counts": [int(c) for c in counts],
    }


def circuit_frequency(driver: Driver, fkey: str, corpus_id: str | None = None, *,
                      database: str | None = None) -> list[dict]:
    records, _, _ = driver.execute_query(_FREQUENCY, fkey=fkey, corpus_id=corpus_id, database_=database,
                                         routing_="r")
    return [dict(r) for r in records]


def feature_page(driver: Driver, fkey: str, corpus_id: str | None = None, *, top: int = 10, neighbours: int = 10,
                 before: int = 8, after: int = 4, database: str | None = None) -> dict:
    """Everything the feature page shows, in one dict. Raises FeatureNotFound."""
    records = quiet_records(driver, _FEATURE, database, write=False, fkey=fkey)  # quiet: no label yet
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
        "histogram": activation_histogram(driver, fkey, corpus_id, database=database),
    }


# -- feature search ------------------------------------------------------------------------------------------
#
# ``q`` is read as a feature key when it looks like one, else as token text:
#   dset/L1.mlp#17, dset/L1.mlp  (or anything with '/' or '#')  -> fkey prefix
#   L2, L2.mlp, L2:123, L2.mlp#123, L2.mlp:123, dset/L2.mlp#17   -> layer [site] [index] [dictionary set]
#   mlp/L2/, mlp/L2/123                                          -> site, layer [index]
#   #123                                                         -> index in every dictionary
#   label:<text>                                                 -> features whose label contains the text
#   anything else, or token:<text>                               -> features that fire on that token
# (``key:<text>`` forces the key reading.) Dictionaries are named L<layer>.<site> (workers/store/from_engine.py)
# and sites are those of the engine's node ids (workers/vocabulary/ids.py).

_SITE = "|".join(SITES)
_LAYER_FORM = re.compile(rf"(?:(?P<dset>[^/#\s]+)/)?L(?P<layer>\d+)(?:[.:/](?P<site>{_SITE}))?(?:[#:/](?P<index>\d+))?/?",
                         re.IGNORECASE)
_SITE_FORM = re.compile(rf"(?P<site>{_SITE})/L(?P<layer>\d+)(?:/(?P<index>\d+)?)?/?", re.IGNORECASE)
_INDEX_FORM = re.compile(r"#(?P<index>\d+)")
MAX_QUERY_CHARS = 200


class BadSearch(InvalidInput):
    """A search parameter that cannot be used; ``field`` names it (q or cursor)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(("query", field), message)
        self.field = field


@dataclass(frozen=True)
class FeatureQuery:
    """What ``q`` asks for: features by key (prefix or layer/site/index) or by the token they fire on."""

    mode: Literal["key", "token"]
    fkey_prefix: str | None = None
    label: str | None = None  # lower-cased text the feature's label contains (``label:`` queries)
    dictionary_set: str | None = None
    layer: int | None = None
    site: str | None = None
    index: int | None = None
    token: str | None = None


def parse_feature_query(q: str) -> FeatureQuery:
    text = q.strip()
    if not text:
        raise BadSearch("q", "q is empty: give a feature key (dset/L1.mlp#17), a prefix (L2.mlp, mlp/L2/, L2:123) "
                             "or a token")
    if len(text) > MAX_QUERY_CHARS:
        raise BadSearch("q", f"q has {len(text)} characters; the limit is {MAX_QUERY_CHARS}")
    low = text.lower()
    if low.startswith("label:"):
        words = low[6:].strip()
        if not words:
            raise BadSearch("q", "'label:' needs text after it, e.g. label:name mover")
        return FeatureQuery("key", label=words)
    if low.startswith("token:"):
        token = text[6:].strip()
        if not token:
            raise BadSearch("q", "'token:' needs a token after it, e.g. token:John")
        return FeatureQuery("token", token=token)
    forced_key = low.startswith("key:")
    if forced_key:
        text = text[4:].strip()
        if not text:
            raise BadSearch("q", "'key:' needs a key or prefix after it, e.g. key:L2.mlp")
    # The site form first: "mlp/L2/" would also read as dictionary set "mlp", layer 2.
    for form in (_SITE_FORM, _LAYER_FORM, _INDEX_FORM):
        m = form.fullmatch(text)
        if m:
            d = m.groupdict()
            return FeatureQuery("key", dictionary_set=d.get("dset"),
                                layer=int(d["layer"]) if d.get("layer") else None,
                                site=d["site"].lower() if d.get("site") else None,
                                index=int(d["index"]) if d.get("index") else None)
    if forced_key or "/" in text or "#" in text:
        return FeatureQuery("key", fkey_prefix=text)
    return FeatureQuery("token", token=text)


# Ranking of key matches: graphs the feature appears in (OCCURS.n_graphs, over the corpus or every corpus),
# then its mean activation (OCCURS.sum_act / OCCURS.n), then fkey. Keyset pagination on that triple. The WHERE
# holds only the predicates the query has (``_KEY_PREDICATES``, constant strings; values are parameters), so that
# a prefix seeks the fkey constraint's index; with a corpus the walk starts from the corpus' OCCURS edges.
_KEY_PREDICATES = {
    "prefix": "f.fkey STARTS WITH $prefix",
    "dset": "f.dictionary_set = $dset",
    "dictionary": "f.dictionary = $dictionary",
    "dict_prefix": "f.dictionary STARTS WITH $dict_prefix",
    "dict_suffix": "f.dictionary ENDS WITH $dict_suffix",
    "index": "f.index = $index",
    "label": "toLower(f.label) CONTAINS $label",
}
_KEYS_ALL_CORPORA = """
MATCH (f:Feature)
WHERE {where}
CALL (f) {{
  OPTIONAL MATCH (f)-[o:OCCURS]->(:Corpus)
  RETURN coalesce(sum(o.n_graphs), 0) AS n_graphs, coalesce(sum(o.n), 0) AS n_instances,
         coalesce(sum(o.sum_act), 0.0) AS sum_act
}}
"""
_KEYS_ONE_CORPUS = """
MATCH (:Corpus {{corpus_id: $corpus_id}})<-[o:OCCURS]-(f:Feature)
WHERE o.corpus = $corpus_id AND {where}
WITH f, sum(o.n_graphs) AS n_graphs, sum(o.n) AS n_instances, sum(o.sum_act) AS sum_act
"""
_KEYS_RANKED = """
WITH f, n_graphs, n_instances, CASE WHEN n_instances > 0 THEN toFloat(sum_act) / n_instances ELSE 0.0 END AS activation
WHERE $after_n IS NULL OR n_graphs < $after_n OR (n_graphs = $after_n AND
      (activation < $after_a OR (activation = $after_a AND f.fkey > $after_f)))
RETURN f.fkey AS fkey, f.dictionary_set AS dictionary_set, f.dictionary AS dictionary, f.index AS index,
       f.label AS label, n_graphs, n_instances, activation
ORDER BY n_graphs DESC, activation DESC, fkey ASC
LIMIT $limit
"""


def _key_search_query(params: dict, corpus_id: str | None) -> str:
    where = " AND ".join(p for name, p in _KEY_PREDICATES.items() if params.get(name) is not None) or "true"
    head = _KEYS_ONE_CORPUS if corpus_id is not None else _KEYS_ALL_CORPORA
    return head.format(where=where) + _KEYS_RANKED


# Ranking of token matches: over complete graphs (of the corpus), the instances at positions whose token is
# the query (case-insensitive, surrounding spaces ignored: tokenizers keep a word's leading space); graphs
# with such an instance, then the largest activation there, then fkey. The subqueries keep the plan a walk per
# graph through the (graph_id, kind) index: left to itself the planner hash-joins every feature instance of the
# database on position (seconds at 300 graphs).
_SEARCH_TOKEN = """
MATCH (g:Graph)
WHERE g.status = 'complete' AND ($corpus_id IS NULL OR g.corpus_id = $corpus_id)
CALL (g) {
  MATCH (e:Node {graph_id: g.graph_id, kind: 'embedding'}) USING INDEX e:Node(graph_id, kind)
  WHERE toLower(trim(e.token)) = $token
  RETURN e.pos AS pos
}
CALL (g, pos) {
  MATCH (n:Node {graph_id: g.graph_id, kind: 'feature'}) USING INDEX n:Node(graph_id, kind)
  WHERE n.pos = pos AND n.fkey IS NOT NULL
  RETURN n
}
WITH n.fkey AS fkey, count(DISTINCT g.graph_id) AS n_graphs, count(n) AS n_instances,
     coalesce(max(n.activation), 0.0) AS activation
WHERE $after_n IS NULL OR n_graphs < $after_n OR (n_graphs = $after_n AND
      (activation < $after_a OR (activation = $after_a AND fkey > $after_f)))
WITH fkey, n_graphs, n_instances, activation ORDER BY n_graphs DESC, activation DESC, fkey ASC LIMIT $limit
MATCH (f:Feature {fkey: fkey})
RETURN fkey, f.dictionary_set AS dictionary_set, f.dictionary AS dictionary, f.index AS index,
       f.label AS label, n_graphs, n_instances, activation
ORDER BY n_graphs DESC, activation DESC, fkey ASC
"""

# The tokens each feature fires on, read from its strongest instances (the (fkey, activation) index) and the
# token-embedding node at the same position of the same graph; normalised like the token search.
_TOP_TOKENS = """
UNWIND $fkeys AS fk
CALL (fk) {
  MATCH (n:Node) USING INDEX n:Node(fkey, activation)
  WHERE n.fkey = fk AND n.activation IS NOT NULL
  MATCH (g:Graph {graph_id: n.graph_id})
  WHERE g.status = 'complete' AND ($corpus_id IS NULL OR g.corpus_id = $corpus_id)
  WITH n ORDER BY n.activation DESC LIMIT $sample
  MATCH (e:Node {graph_id: n.graph_id, kind: 'embedding'})
  WHERE e.pos = n.pos
  WITH toLower(trim(e.token)) AS token, count(*) AS c, max(n.activation) AS a
  ORDER BY c DESC, a DESC, token ASC LIMIT $per_feature
  RETURN collect({token: token, n: c, max_activation: a}) AS top_tokens
}
RETURN fk, top_tokens
"""


def _dictionary_filters(fq: FeatureQuery) -> dict:
    if fq.layer is not None and fq.site is not None:
        return {"dictionary": f"L{fq.layer}.{fq.site}", "dict_prefix": None, "dict_suffix": None}
    return {"dictionary": None, "dict_prefix": f"L{fq.layer}." if fq.layer is not None else None,
            "dict_suffix": f".{fq.site}" if fq.site is not None else None}


def encode_cursor(item: dict, q: str, corpus_id: str | None) -> str:
    """An opaque cursor: the last item's sort key, tied to the query it came from."""
    payload = {"n": item["n_graphs"], "a": item["activation"], "f": item["fkey"], "q": q.strip(), "c": corpus_id}
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, q: str, corpus_id: str | None) -> tuple[int, float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        p = json.loads(raw)
        n, a, f = p["n"], p["a"], p["f"]
        # Only what encode_cursor writes: Neo4j takes 64-bit integers, and NaN would match nothing.
        if not (isinstance(n, int) and 0 <= n < 2**62 and isinstance(a, int | float) and math.isfinite(a)
                and isinstance(f, str)):
            raise ValueError(cursor)
        same = p["q"] == q.strip() and p["c"] == corpus_id
    except (ValueError, TypeError, KeyError, IndexError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise BadSearch("cursor", "cursor is not one this API returned; pass next_cursor unchanged") from None
    if not same:
        raise BadSearch("cursor", "cursor belongs to another search (q or corpus_id differ); start without one")
    return n, float(a), f


def search_features(driver: Driver, q: str, corpus_id: str | None = None, *, limit: int = 20,
                    cursor: str | None = None, top_tokens: int = 3, database: str | None = None) -> dict:
    """Features matching ``q`` (see the grammar above), ranked, one page of ``limit`` after ``cursor``.

    Returns ``{"query": {...parsed}, "items": [...], "next_cursor": str | None}``; raises BadSearch."""
    fq = parse_feature_query(q)
    after_n, after_a, after_f = decode_cursor(cursor, q, corpus_id) if cursor else (None, None, None)
    common = {"corpus_id": corpus_id, "after_n": after_n, "after_a": after_a, "after_f": after_f,
              "limit": int(limit) + 1}
    if fq.mode == "key":
        params = {"prefix": fq.fkey_prefix, "dset": fq.dictionary_set, "index": fq.index, "label": fq.label,
                  **_dictionary_filters(fq)}
        records, _, _ = driver.execute_query(_key_search_query(params, corpus_id), **params, **common,
                                             database_=database, routing_="r")
    else:
        records, _, _ = driver.execute_query(_SEARCH_TOKEN, token=(fq.token or "").strip().lower(), **common,
                                             database_=database, routing_="r")
    items = [dict(r) for r in records]
    more = len(items) > limit
    items = items[:limit]
    tokens: dict[str, list] = {}
    if items and top_tokens > 0:
        rows, _, _ = driver.execute_query(_TOP_TOKENS, fkeys=[i["fkey"] for i in items], corpus_id=corpus_id,
                                          sample=64, per_feature=int(top_tokens), database_=database, routing_="r")
        tokens = {r["fk"]: r["top_tokens"] for r in rows}
    for item in items:
        m = re.fullmatch(r"L(\d+)\.(\w+)", item.get("dictionary") or "")
        item["layer"], item["site"] = (int(m.group(1)), m.group(2)) if m else (None, None)
        item["top_tokens"] = tokens.get(item["fkey"], [])
    return {"query": {k: v for k, v in fq.__dict__.items() if v is not None}, "items": items,
            "next_cursor": encode_cursor(items[-1], q, corpus_id) if more else None}
