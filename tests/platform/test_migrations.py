"""The migration runner against the real server: order, idempotence, checksums, the lock."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from neo4j.exceptions import ConstraintError

from service.db.migrations import (
    MIGRATIONS_DIR,
    MigrationChecksumMismatch,
    MigrationLockBusy,
    acquire_lock,
    load_migrations,
    migrate,
    migration_state,
    release_lock,
    split_statements,
)


@pytest.fixture
def scratch(neo4j_driver, settings, unique_id, tmp_path):
    """A migrations directory and ledger of this test only; its records, lock and indexes are removed after."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    yield directory, unique_id
    db = settings.neo4j_database
    neo4j_driver.execute_query("MATCH (m:SchemaMigration {ledger: $l}) DELETE m", l=unique_id, database_=db)
    neo4j_driver.execute_query("MATCH (m:SchemaMigrationLock {ledger: $l}) DELETE m", l=unique_id, database_=db)
    records, _, _ = neo4j_driver.execute_query(
        "SHOW INDEXES YIELD name WHERE name STARTS WITH $p RETURN name", p=unique_id, database_=db
    )
    for record in records:
        neo4j_driver.execute_query(f"DROP INDEX {record['name']} IF EXISTS", database_=db)


def _index_migration(directory: Path, version: int, prefix: str, prop: str = "x") -> Path:
    path = directory / f"{version:04d}_index_{prop}.cypher"
    path.write_text(
        f"// scratch migration {version}\n"
        f"CREATE INDEX {prefix}_{version}_{prop} IF NOT EXISTS\nFOR (n:{prefix.capitalize()}) ON (n.{prop});\n"
    )
    return path


def _indexes(driver, database: str, prefix: str) -> set[str]:
    records, _, _ = driver.execute_query(
        "SHOW INDEXES YIELD name, state WHERE name STARTS WITH $p RETURN name, state", p=prefix, database_=database
    )
    assert all(r["state"] == "ONLINE" for r in records)  # the runner waited for them
    return {r["name"] for r in records}


def test_split_statements_drops_comments_and_splits_at_line_end_semicolons():
    text = "// header; not a statement\nCREATE INDEX a IF NOT EXISTS\nFOR (n:A) ON (n.x);\n\nRETURN 'a;b';  \n"
    assert split_statements(text) == ["CREATE INDEX a IF NOT EXISTS\nFOR (n:A) ON (n.x)", "RETURN 'a;b'"]


def test_project_migrations_are_applied_and_second_run_is_a_no_op(neo4j_driver, settings):
    versions = [m.version for m in load_migrations(MIGRATIONS_DIR)]
    assert versions == sorted(versions) and versions[:2] == [1, 2]  # gaps are allowed, order is by number
    assert migration_state(neo4j_driver, settings.neo4j_database).up_to_date
    report = migrate(neo4j_driver, settings.neo4j_database)
    assert report.applied == []
    assert report.already_applied == versions


def test_project_constraints_are_enforced(neo4j_driver, settings, unique_id):
    db = settings.neo4j_database
    names = {r["name"] for r in neo4j_driver.execute_query("SHOW CONSTRAINTS YIELD name", database_=db).records}
    assert {"node_uid_unique", "feature_fkey_unique", "graph_id_unique", "prompt_id_unique"} <= names
    index_names = {r["name"] for r in neo4j_driver.execute_query("SHOW INDEXES YIELD name", database_=db).records}
    assert {"node_graph_id", "node_fkey", "agg_corpus"} <= index_names
    neo4j_driver.execute_query("CREATE (:Node {uid: $u, graph_id: $u})", u=unique_id, database_=db)
    try:
        with pytest.raises(ConstraintError):
            neo4j_driver.execute_query("CREATE (:Node {uid: $u})", u=unique_id, database_=db)
    finally:
        neo4j_driver.execute_query("MATCH (n:Node {uid: $u}) DELETE n", u=unique_id, database_=db)


def test_scratch_ledger_applies_in_order_once(neo4j_driver, settings, scratch):
    directory, ledger = scratch
    db = settings.neo4j_database
    _index_migration(directory, 1, ledger, "a")
    _index_migration(directory, 2, ledger, "b")
    first = migrate(neo4j_driver, db, directory, ledger=ledger)
    assert first.applied == [1, 2]
    assert _indexes(neo4j_driver, db, ledger) == {f"{ledger}_1_a", f"{ledger}_2_b"}
    second = migrate(neo4j_driver, db, directory, ledger=ledger)
    assert second.applied == [] and second.already_applied == [1, 2]
    _index_migration(directory, 3, ledger, "c")
    assert migrate(neo4j_driver, db, directory, ledger=ledger).applied == [3]
    records, _, _ = neo4j_driver.execute_query(
        "MATCH (m:SchemaMigration {ledger: $l}) RETURN m.version AS v, m.checksum AS c ORDER BY v",
        l=ledger, database_=db,
    )
    files = {m.version: m.checksum for m in load_migrations(directory)}
    assert [(r["v"], r["c"]) for r in records] == sorted(files.items())


def test_edited_applied_migration_is_refused_and_nothing_else_runs(neo4j_driver, settings, scratch):
    directory, ledger = scratch
    db = settings.neo4j_database
    path = _index_migration(directory, 1, ledger, "a")
    migrate(neo4j_driver, db, directory, ledger=ledger)
    path.write_text(path.read_text().replace("(n.a)", "(n.a2)"))
    _index_migration(directory, 2, ledger, "b")
    with pytest.raises(MigrationChecksumMismatch, match=rf"{path.name} was edited after it was applied"):
        migrate(neo4j_driver, db, directory, ledger=ledger)
    assert _indexes(neo4j_driver, db, ledger) == {f"{ledger}_1_a"}
    assert migration_state(neo4j_driver, db, directory, ledger).changed == [1]
    # The lock was released despite the error: a fixed directory migrates again.
    path.write_text(path.read_text().replace("(n.a2)", "(n.a)"))
    assert migrate(neo4j_driver, db, directory, ledger=ledger).applied == [2]


def test_lock_held_by_another_runner_blocks(neo4j_driver, settings, scratch):
    directory, ledger = scratch
    db = settings.neo4j_database
    _index_migration(directory, 1, ledger)
    acquire_lock(neo4j_driver, db, "other-runner", ledger=ledger)
    try:
        with pytest.raises(MigrationLockBusy, match="other-runner"):
            migrate(neo4j_driver, db, directory, ledger=ledger, lock_wait_s=0.5)
        assert _indexes(neo4j_driver, db, ledger) == set()
    finally:
        release_lock(neo4j_driver, db, "other-runner", ledger=ledger)
    assert migrate(neo4j_driver, db, directory, ledger=ledger).applied == [1]


def test_stale_lock_of_a_dead_runner_is_taken_over(neo4j_driver, settings, scratch):
    directory, ledger = scratch
    db = settings.neo4j_database
    _index_migration(directory, 1, ledger)
    neo4j_driver.execute_query(
        "CREATE (:SchemaMigrationLock {ledger: $l, owner: 'dead', acquired_at: datetime() - duration('PT2H')})",
        l=ledger, database_=db,
    )
    assert migrate(neo4j_driver, db, directory, ledger=ledger, lock_wait_s=0.5, stale_lock_s=3600).applied == [1]


def test_concurrent_runners_apply_each_migration_exactly_once(neo4j_driver, settings, scratch):
    directory, ledger = scratch
    db = settings.neo4j_database
    for version, prop in enumerate("abcd", start=1):
        _index_migration(directory, version, ledger, prop)
    barrier = threading.Barrier(3)
    reports, errors = [], []

    def run() -> None:
        barrier.wait()
        try:
            reports.append(migrate(neo4j_driver, db, directory, ledger=ledger, lock_wait_s=60))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sorted(v for r in reports for v in r.applied) == [1, 2, 3, 4]
    records, _, _ = neo4j_driver.execute_query(
        "MATCH (m:SchemaMigration {ledger: $l}) RETURN count(*) AS n", l=ledger, database_=db
    )
    assert records[0]["n"] == 4
