"""Streaming, resumable training of many dictionaries at once (issue #16): ``train.py``."""
