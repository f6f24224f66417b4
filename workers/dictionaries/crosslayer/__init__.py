"""Cross-layer transcoders: the module (``module.py``); files are read and written by
``workers.dictionaries.formats`` (circuit-tracer's CLT layout and the native format)."""
