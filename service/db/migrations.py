"""Versioned schema migrations: ``migrations/NNNN_name.cypher`` applied in order, exactly once.

Each applied file is recorded as ``(:SchemaMigration {id, ledger, version, name, checksum, applied_at})``.
A file that changed after it was applied is refused (fix forward with a new file instead). A lock node,
``(:SchemaMigrationLock {ledger})`` under a uniqueness constraint, is created in its own transaction and
deleted at the end, so two runners (two API replicas starting, `atlas migrate` during start-up) cannot
interleave; a lock older than ``stale_lock_s`` (a runner that was SIGKILLed) is taken over.

``ledger`` namespaces the records and the lock. The project uses ``"atlas"``; tests use their own so they
can exercise the runner on scratch files without touching the real schema records.

File format: Cypher statements, each ending with ``;`` at the end of a line; lines starting with ``//``
are comments. Schema statements should say ``IF NOT EXISTS`` so that a runner interrupted between a
statement and its record can simply run again.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import neo4j
from neo4j.exceptions import ClientError, ConstraintError

DEFAULT_LEDGER = "atlas"
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.cypher$")

# The runner's own bookkeeping schema; created before the lock can exist, idempotently.
_BOOTSTRAP = (
    "CREATE CONSTRAINT schema_migration_id_unique IF NOT EXISTS "
    "FOR (m:SchemaMigration) REQUIRE m.id IS UNIQUE",
    "CREATE CONSTRAINT schema_migration_lock_unique IF NOT EXISTS "
    "FOR (l:SchemaMigrationLock) REQUIRE l.ledger IS UNIQUE",
)


class MigrationError(RuntimeError):
    """Migrations could not be applied; the message names the file and the fix."""


class MigrationChecksumMismatch(MigrationError):
    """An already-applied migration file was edited."""


class MigrationLockBusy(MigrationError):
    """Another runner holds the migration lock."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    checksum: str  # sha256 of the file's bytes
    statements: tuple[str, ...]


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str


@dataclass
class MigrationReport:
    applied: list[int] = field(default_factory=list)  # versions applied by this run
    already_applied: list[int] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class MigrationState:
    applied: list[int]
    pending: list[int]
    changed: list[int]  # applied, but the file's checksum differs now
    missing: list[int]  # applied, but no such file any more

    @property
    def up_to_date(self) -> bool:
        return not (self.pending or self.changed or self.missing)


def split_statements(text: str) -> list[str]:
    """Statements of a migration file: ``//`` comment lines dropped, split at ``;`` ending a line."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    return [part.strip() for part in re.split(r";[ \t]*(?:\n|$)", body) if part.strip()]


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """All migration files of ``directory`` sorted by version, validated for naming and duplicates."""
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist.")
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.cypher")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(
                f"{path.name}: migration files are named NNNN_lower_snake_name.cypher (e.g. 0003_add_x.cypher)."
            )
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"{path.name} and {migrations[version].path.name} share version {version:04d}.")
        raw = path.read_bytes()
        statements = tuple(split_statements(raw.decode()))
        if not statements:
            raise MigrationError(f"{path.name} contains no statement.")
        migrations[version] = Migration(version, match.group(2), path, hashlib.sha256(raw).hexdigest(), statements)
    return [migrations[v] for v in sorted(migrations)]


def _record_id(ledger: str, version: int) -> str:
    return f"{ledger}/{version:04d}"


def _bootstrap(driver: neo4j.Driver, database: str) -> None:
    for statement in _BOOTSTRAP:
        try:
            driver.execute_query(statement, database_=database)
        except ClientError as exc:
            # Two runners creating the same constraint at once: the loser sees "already exists".
            if "AlreadyExists" not in (exc.code or ""):
                raise


def applied_migrations(driver: neo4j.Driver, database: str, ledger: str = DEFAULT_LEDGER) -> list[AppliedMigration]:
    # Notifications off: on a fresh database the server warns that the property keys do not exist yet.
    with driver.session(
        database=database, default_access_mode=neo4j.READ_ACCESS, notifications_min_severity="OFF"
    ) as session:
        records = list(session.run(
            "MATCH (m:SchemaMigration {ledger: $ledger}) RETURN m.version AS version, m.name AS name, "
            "m.checksum AS checksum ORDER BY version",
            ledger=ledger,
        ))
    return [AppliedMigration(r["version"], r["name"], r["checksum"]) for r in records]


def migration_state(
    driver: neo4j.Driver, database: str, directory: Path = MIGRATIONS_DIR, ledger: str = DEFAULT_LEDGER
) -> MigrationState:
    """Compare the files with the records (read-only; used by /readyz)."""
    files = {m.version: m for m in load_migrations(directory)}
    applied = {a.version: a for a in applied_migrations(driver, database, ledger)}
    return MigrationState(
        applied=sorted(applied),
        pending=sorted(set(files) - set(applied)),
        changed=sorted(v for v, a in applied.items() if v in files and files[v].checksum != a.checksum),
        missing=sorted(set(applied) - set(files)),
    )


# --- the lock ---------------------------------------------------------------------------------------------


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def acquire_lock(
    driver: neo4j.Driver,
    database: str,
    owner: str,
    *,
    ledger: str = DEFAULT_LEDGER,
    wait_s: float = 60.0,
    stale_lock_s: float = 900.0,
) -> None:
    """Create the ledger's lock node, waiting up to ``wait_s`` while another live runner holds it."""
    _bootstrap(driver, database)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            driver.execute_query(
                "CREATE (:SchemaMigrationLock {ledger: $ledger, owner: $owner, acquired_at: datetime()})",
                ledger=ledger,
                owner=owner,
                database_=database,
            )
            return
        except ConstraintError:
            pass
        records, _, _ = driver.execute_query(
            "MATCH (l:SchemaMigrationLock {ledger: $ledger}) "
            "RETURN l.owner AS owner, toString(l.acquired_at) AS since, "
            "duration.inSeconds(l.acquired_at, datetime()).seconds AS age_s",
            ledger=ledger,
            database_=database,
        )
        if not records or records[0]["age_s"] is None:
            # Released between our CREATE and this read: try again at once. (Under read-committed isolation a
            # lock deleted while this query ran can still be matched, with its properties already null.)
            continue
        holder, since, age_s = records[0]["owner"], records[0]["since"], records[0]["age_s"]
        if age_s > stale_lock_s:
            # Delete only the exact stale holder, so two runners breaking it at once cannot both win.
            driver.execute_query(
                "MATCH (l:SchemaMigrationLock {ledger: $ledger, owner: $holder}) DELETE l",
                ledger=ledger,
                holder=holder,
                database_=database,
            )
            continue
        if time.monotonic() > deadline:
            raise MigrationLockBusy(
                f"another migration runner ({holder}, since {since}) holds the '{ledger}' migration lock. "
                f"Wait for it to finish; if that runner is dead, the lock is taken over after "
                f"{stale_lock_s:.0f}s, or remove it now with `atlas migrate --break-lock`."
            )
        time.sleep(0.25)


def release_lock(driver: neo4j.Driver, database: str, owner: str, *, ledger: str = DEFAULT_LEDGER) -> None:
    driver.execute_query(
        "MATCH (l:SchemaMigrationLock {ledger: $ledger, owner: $owner}) DELETE l",
        ledger=ledger,
        owner=owner,
        database_=database,
    )


def break_lock(driver: neo4j.Driver, database: str, *, ledger: str = DEFAULT_LEDGER) -> int:
    """Remove the ledger's lock whoever holds it (operator action). Returns how many were removed."""
    records, _, _ = driver.execute_query(
        "MATCH (l:SchemaMigrationLock {ledger: $ledger}) DELETE l RETURN count(*) AS n",
        ledger=ledger,
        database_=database,
    )
    return int(records[0]["n"])


# --- applying ---------------------------------------------------------------------------------------------


def _check_applied(files: dict[int, Migration], applied: list[AppliedMigration], directory: Path) -> None:
    for record in applied:
        migration = files.get(record.version)
        if migration is None:
            raise MigrationError(
                f"migration {record.version:04d}_{record.name} is recorded as applied but no such file is in "
                f"{directory}. This database was migrated by a newer checkout: update yours."
            )
        if migration.checksum != record.checksum:
            raise MigrationChecksumMismatch(
                f"{migration.path.name} was edited after it was applied (checksum {record.checksum[:12]} in the "
                f"database, {migration.checksum[:12]} on disk). Applied migrations are immutable: restore the "
                "file (git checkout) and put the change in a new, higher-numbered migration."
            )


def migrate(
    driver: neo4j.Driver,
    database: str,
    directory: Path = MIGRATIONS_DIR,
    *,
    ledger: str = DEFAULT_LEDGER,
    lock_wait_s: float = 60.0,
    stale_lock_s: float = 900.0,
    index_timeout_s: int = 300,
    owner: str | None = None,
) -> MigrationReport:
    """Apply the pending migrations of ``directory`` in version order, under the ledger's lock.

    Raises MigrationChecksumMismatch before applying anything if an applied file changed, and
    MigrationLockBusy if another runner keeps the lock past ``lock_wait_s``.
    """
    started = time.monotonic()
    files = {m.version: m for m in load_migrations(directory)}
    owner = owner or new_owner()
    acquire_lock(driver, database, owner, ledger=ledger, wait_s=lock_wait_s, stale_lock_s=stale_lock_s)
    report = MigrationReport()
    try:
        # Read under the lock: a runner that waited sees what the previous one applied.
        applied = applied_migrations(driver, database, ledger)
        _check_applied(files, applied, directory)
        done = {a.version for a in applied}
        report.already_applied = sorted(done)
        for version in sorted(set(files) - done):
            migration = files[version]
            for number, statement in enumerate(migration.statements, start=1):
                try:
                    # Schema commands cannot share a transaction with writes: one auto-commit each.
                    with driver.session(database=database) as session:
                        session.run(statement).consume()
                except ClientError as exc:
                    raise MigrationError(
                        f"{migration.path.name}, statement {number}, failed: {exc.message}\n{statement}\n"
                        "Nothing was recorded for this file; fix it and run `atlas migrate` again."
                    ) from exc
            driver.execute_query(
                "CREATE (:SchemaMigration {id: $id, ledger: $ledger, version: $version, name: $name, "
                "checksum: $checksum, applied_at: datetime()})",
                id=_record_id(ledger, version),
                ledger=ledger,
                version=version,
                name=migration.name,
                checksum=migration.checksum,
                database_=database,
            )
            report.applied.append(version)
        if report.applied:
            # New indexes populate in the background; callers expect them usable when we return.
            driver.execute_query("CALL db.awaitIndexes($timeout)", timeout=index_timeout_s, database_=database)
    finally:
        release_lock(driver, database, owner, ledger=ledger)
    report.seconds = time.monotonic() - started
    return report
