"""Domain errors: what was wrong with a request's input, named by meaning, never by an HTTP status.

Library code (validation of a corpus, the registry, the query layer) raises these; the API maps them to
statuses in one place, ``service/api/errors.py``. Each input error names the offending field as a path
(``loc``), e.g. ``("body", "prompts", 3, "text")``, so a client can point at it.
"""

from __future__ import annotations


class InvalidInput(ValueError):
    """A field whose value cannot be used (the API answers 422)."""

    def __init__(self, loc: tuple, message: str) -> None:
        super().__init__(message)
        self.loc = tuple(loc)


class MalformedInput(InvalidInput):
    """The input cannot be read at all: not UTF-8, not JSON (400)."""


class InputTooLarge(InvalidInput):
    """The input is over a configured size limit (413)."""


class UnsupportedInputType(InvalidInput):
    """The input comes in a media type that is not accepted (415)."""


class NotPermitted(InvalidInput):
    """The value is well formed but points somewhere the configuration does not allow (403)."""


class NotFound(LookupError):
    """The thing a request names does not exist (404)."""
