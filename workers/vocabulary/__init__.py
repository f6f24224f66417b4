"""The shared vocabulary of Circuit Atlas: the names every layer (engine, store, service, viewer) agrees on.
Plain Python, no torch: the service and the store import it without loading any model code.

| module | what |
|---|---|
| ``ids.py`` | node ids (``feat:L2.mlp:p5:f123`` ...) and their parser, instance uids (``graph|node``), feature keys (``set/L2.mlp#17``) |
| ``kinds.py`` | node kinds: the engine's short names (``feat``, ``err``, ``emb`` ...), the store's long names (``feature``, ``error``, ``embedding`` ...), the one mapping between them, Neo4j labels, Neuronpedia feature types, the kinds a circuit always keeps |
| ``tensors.py`` | ``SITES`` and the names of the readable tensors of a frozen run (``in:L{l}.{site}``, ``resid:L{l}``, ``delta:L{l}.{site}``, ``q:``/``k:L{l}``, ``final``) and their parser |
| ``defaults.py`` | influence-pruning defaults (node 0.8, edge 0.98) and the job states |

The viewer reads it from ``GET /ui/schema.json`` (``service/ui/schema.py``).
"""
