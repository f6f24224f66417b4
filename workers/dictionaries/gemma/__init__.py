"""Dictionaries for Gemma 3 270M (issue #16). ``slice.py``: the test suite's small trained slice."""
