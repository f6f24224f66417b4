"""A real-text English corpus for training dictionaries on real LMs, built offline from Debian packages.

``sources.py`` turns each package's files into documents; ``build.py`` deduplicates, splits train / held-out,
tokenises and caches the result by content hash; ``cli.py`` is ``atlas data build|info``.
"""
