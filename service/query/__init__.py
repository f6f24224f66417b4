"""The query layer: the Cypher of every read the API serves, one function per query.

Each module holds plain functions taking a ``neo4j.Driver`` (or session) and parameters and returning plain
dicts / dataclasses; the routes in ``service/api`` are thin shells over them and the tests compare each
one with a brute-force Python reference on graphs written by the real writer.

- ``circuits``         a stored graph's circuit with pruning chosen at read time; Neuronpedia JSON
- ``features``         feature pages: top activations with token context, AGG neighbours, frequency
- ``global_circuits``  corpus-aggregated neighbourhoods (normalised), virtual-weight neighbours
- ``paths``            strongest paths (beam search over bounded neighbourhood queries)
- ``user_cypher``      the guard and runner of ``POST /cypher`` (read-only, bounded)
"""
