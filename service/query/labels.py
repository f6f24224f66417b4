"""Feature labels: a short label and a note a researcher attaches to a ``(:Feature)``.

Stored on the Feature itself: ``label``, ``label_note``, ``label_by`` (the ``key_id`` string of the API key that
set it; no relationship to the key, which may live outside Neo4j) and ``label_at`` (epoch seconds). Clearing a
label removes label, note and author but keeps ``label_at``, so :func:`labels_version` (the newest ``label_at``)
changes on every set and clear: circuits, which show labels, put it in their ETag.
"""

from __future__ import annotations

import time

from neo4j import Driver

from service.query.features import FeatureNotFound
from workers.pipeline.jobs import quiet_records

MAX_LABEL_CHARS = 120
MAX_NOTE_CHARS = 4000

_SET = """
MATCH (f:Feature {fkey: $fkey})
SET f.label = $label, f.label_note = $note, f.label_by = $key_id, f.label_at = $now
RETURN f.fkey AS fkey, f.label AS label, f.label_note AS note, f.label_by AS set_by, f.label_at AS set_at
"""

_CLEAR = """
MATCH (f:Feature {fkey: $fkey})
REMOVE f.label, f.label_note, f.label_by
SET f.label_at = $now
RETURN f.fkey AS fkey
"""

_OF = """
UNWIND $fkeys AS fk
MATCH (f:Feature {fkey: fk}) WHERE f.label IS NOT NULL
RETURN f.fkey AS fkey, f.label AS label
"""

_VERSION = """
MATCH (f:Feature) WHERE f.label_at IS NOT NULL
RETURN f.label_at AS at ORDER BY f.label_at DESC LIMIT 1
"""


def set_label(driver: Driver, fkey: str, label: str, note: str, key_id: str, *,
              database: str | None = None) -> dict:
    """Label a feature (replacing any label); returns {fkey, label, note, set_by, set_at}. Raises FeatureNotFound."""
    records, _, _ = driver.execute_query(_SET, fkey=fkey, label=label, note=note, key_id=key_id, now=time.time(),
                                         database_=database)
    if not records:
        raise FeatureNotFound(f"no feature {fkey!r}; feature keys look like '<dictionary_set>/<dictionary>#<index>'")
    return dict(records[0])


def clear_label(driver: Driver, fkey: str, *, database: str | None = None) -> None:
    """Remove a feature's label and note. Raises FeatureNotFound."""
    records, _, _ = driver.execute_query(_CLEAR, fkey=fkey, now=time.time(), database_=database)
    if not records:
        raise FeatureNotFound(f"no feature {fkey!r}")


def labels_of(driver: Driver, fkeys: list[str], *, database: str | None = None) -> dict[str, str]:
    """{fkey: label} of those of ``fkeys`` that are labelled."""
    if not fkeys:
        return {}
    # Quiet: before the first label ever, Neo4j warns that the property key `label` does not exist.
    records = quiet_records(driver, _OF, database, write=False, fkeys=sorted(set(fkeys)))
    return {r["fkey"]: r["label"] for r in records}


def labels_version(driver: Driver, *, database: str | None = None) -> float | None:
    """The time of the newest label change (None: no feature was ever labelled)."""
    records = quiet_records(driver, _VERSION, database, write=False)
    return records[0]["at"] if records else None
