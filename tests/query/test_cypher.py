"""POST /cypher: a hostile-query corpus against the real server. None may change the database (counts and
a checksum of every node and relationship before/after) or outlive its timeout; each refusal names its rule.
Each guard layer (lexical, EXPLAIN plan, READ access mode) is also tested on its own."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import neo4j
import pytest

from service.query.user_cypher import (
    CypherLimits,
    CypherRefused,
    CypherRunner,
    SharedSlots,
    lexical_check,
    plan_check,
)

LIMITS = CypherLimits(timeout_s=2.0, max_rows=50, max_bytes=20_000, max_hops=4)
SLACK_S = 3.0  # a refused/timed-out query must answer within timeout + this

# 100,000 x replace() over a 10 MB string, in one expression: before the loop-body rule it passed every other rule
# and ran on for minutes after its 5 s timeout ('Terminated' in SHOW TRANSACTIONS, still holding a core).
EXPENSIVE_BODY = ("WITH 'abcdefghij' AS s" + " WITH s + s AS s" * 20
                  + " RETURN size([i IN range(1, 100000) | size(replace(s, 'a', 'b'))]) AS n")

# (query, rule it must hit); None = any refusal (e.g. a syntax error on a mangled keyword)
HOSTILE: list[tuple[str, str | None]] = [
    ("CREATE (n:Pwned) RETURN n", "no-writes"),
    ("create (n:Pwned)", "no-writes"),
    ("CrEaTe (:Pwned)", "no-writes"),
    ("MATCH (n) SET n.pwned = 1", "no-writes"),
    ("MATCH (n) DETACH DELETE n", "no-writes"),
    ("MATCH (n) WITH n LIMIT 1 DELETE n", "no-writes"),
    ("MERGE (n:Pwned {x: 1})", "no-writes"),
    ("MATCH (n:Feature) REMOVE n.fkey", "no-writes"),
    ("FOREACH (x IN [1] | CREATE (:Pwned))", "no-writes"),
    ("UNWIND [1, 2] AS x CREATE (:Pwned {x: x})", "no-writes"),
    ("/* harmless */ CREATE (:Pwned)", "no-writes"),
    ("MATCH (n) RETURN n // comment\n; CREATE (:Pwned)", "single-statement"),
    ("RETURN 1; CREATE (:Pwned)", "single-statement"),
    ("MATCH (n) WITH n LIMIT 1 CALL (n) { SET n.x = 1 } RETURN 1", "no-writes"),
    ("CALL () { CALL () { CREATE (:Pwned) } } RETURN 1", "no-writes"),
    ("MATCH (n) CALL (n) { DELETE n } IN TRANSACTIONS RETURN 1", "no-writes"),
    ("CREATE INDEX pwned FOR (n:Pwned) ON (n.x)", "no-writes"),
    ("CREATE CONSTRAINT pwned FOR (n:Pwned) REQUIRE n.x IS UNIQUE", "no-writes"),
    ("DROP CONSTRAINT node_uid_unique", "no-writes"),
    ("DROP INDEX node_fkey", "no-writes"),
    ("CALL db.createLabel('Pwned')", "read-only"),
    ("CALL db.createProperty('pwned')", "read-only"),
    ("CALL db.createRelationshipType('PWNED')", "read-only"),
    ("CALL db.info()", "procedure-allowlist"),
    ("CALL db.stats.retrieve('GRAPH COUNTS')", "procedure-allowlist"),
    ("CALL db.clearQueryCaches()", None),
    ("CALL dbms.setConfigValue('db.logs.query.enabled', 'OFF')", None),
    ("CALL dbms.components()", None),
    ("CALL dbms.listConfig()", None),
    ("CALL db.awaitIndexes(1)", None),
    ("CALL apoc.cypher.runWrite('CREATE (:Pwned)', {})", None),
    ("call DB.LABELS()", None),
    ("LOAD CSV FROM 'file:///etc/passwd' AS line RETURN line", "no-load-csv"),
    ("load csv from 'https://example.com/x.csv' as l return l", "no-load-csv"),
    ("SHOW TRANSACTIONS", "no-show"),
    ("SHOW USERS", "no-show"),
    ("show settings yield name return name", "no-show"),
    ("TERMINATE TRANSACTIONS 'neo4j-transaction-1'", "no-terminate"),
    ("USE system SHOW USERS", "no-use"),
    ("USE neo4j MATCH (n) RETURN n LIMIT 1", "no-use"),
    ("CYPHER runtime=interpreted CREATE (:Pwned)", "no-query-options"),
    ("EXPLAIN CREATE (:Pwned)", "no-explain-profile"),
    ("PROFILE MATCH (n) RETURN n", "no-explain-profile"),
    ("\uff23\uff32\uff25\uff21\uff34\uff25 (:Pwned)", None),  # fullwidth CREATE
    ("CRE\u200bATE (:Pwned)", None),  # zero-width space inside the keyword
    ("CREATE\u00a0(:Pwned)", "no-writes"),  # no-break space after it
    ("MATCH (n) RETURN n /* \u2028 */ ; CREATE (:Pwned)", "single-statement"),
    ("CREATE (:`Pwned`)", "no-writes"),
    ("CREATE (:Pwned {name: '\u0000'})", "no-writes"),
    ("MATCH (a)-[*]->(b) RETURN count(*)", "bounded-var-length"),
    ("MATCH (a)-[*2..]->(b) RETURN count(*)", "bounded-var-length"),
    ("MATCH (a)-[*1..20]->(b) RETURN count(*)", "bounded-var-length"),
    ("MATCH p = shortestPath((a)-[*]-(b)) RETURN p", "bounded-var-length"),
    ("MATCH (a) ((x)-->(y))+ (b) RETURN count(*)", "bounded-var-length"),
    ("MATCH (a) ((x)-->(y) WHERE x.layer > 0){1,} (b) RETURN count(*)", "bounded-var-length"),
    ("MATCH p = ANY SHORTEST (a)-->+(b) RETURN p", "bounded-var-length"),
    ("", "non-empty"),
    ("RETURN 1 " + "+ 1 " * 6000, "query-size"),
    ("MATCH (n RETURN n", "syntax"),
    # Loops inside one expression, which Neo4j does not stop at the timeout (measured: still running minutes
    # after 'Terminated'), and ranges too large to loop over
    ("RETURN size(reduce(s = '', i IN range(1, 80000000) | s + 'xxxxxxxxxx'))", "expression-loop"),
    ("UNWIND range(1, 1000000) AS x WITH collect(x) AS xs RETURN size([a IN xs WHERE a < 0])", "expression-loop"),
    ("RETURN size([a IN range(1, 1000) WHERE any(b IN range(1, 1000) WHERE a * b < 0)])", "expression-loop"),
    ("RETURN size([x IN range(1, 2000000000) WHERE x % 7 = 100])", "range-size"),
    ("RETURN any(x IN range(1, 2000000000) WHERE x < 0)", "range-size"),
    ("RETURN range(1, 2000000000) = range(1, 2000000000)", "range-size"),
    ("RETURN -5 IN range(1, $n)", "range-size"),
    ("UNWIND [1] + range(1, 2000000000) AS x RETURN count(x)", "range-size"),
    # A cheap loop whose body is expensive: it touches a huge value held by another variable, or builds a range
    (EXPENSIVE_BODY, "loop-body"),
    ("RETURN size([i IN range(1, 100000) | size(range(1, 100000))])", "loop-body"),
    ("UNWIND range(1, 1000000) AS x WITH collect(x) AS xs RETURN size([i IN range(1, 100000) WHERE i IN xs])",
     "loop-body"),
    ("MATCH (n) WITH n, '" + "x" * 100 + "' AS s RETURN all(k IN keys(n) WHERE k <> s)", "loop-body"),
]

# Huge but read-only: must be stopped by the timeout or capped, never outlive the timeout.
EXPENSIVE = [
    "MATCH (a), (b), (c), (d) WHERE a.pos + b.pos + c.pos + d.pos = -1 RETURN count(*)",
    "UNWIND range(1, 1000000000) AS x WITH x WHERE x % 7 = 100 RETURN count(x)",
    "MATCH (a)-[*1..4]-(b) RETURN count(*)",
]


def fingerprint(driver, db: str) -> tuple:  # noqa: ANN001
    """Counts plus a sha256 over every node's and relationship's id, labels/type and properties."""
    h = hashlib.sha256()
    with driver.session(database=db) as s:
        for r in s.run("MATCH (n) RETURN elementId(n) AS id, labels(n) AS l, properties(n) AS p ORDER BY id"):
            h.update(json.dumps([r["id"], sorted(r["l"]), r["p"]], sort_keys=True, default=str).encode())
        for r in s.run("MATCH ()-[e]->() RETURN elementId(e) AS id, type(e) AS t, properties(e) AS p ORDER BY id"):
            h.update(json.dumps([r["id"], r["t"], r["p"]], sort_keys=True, default=str).encode())
        n = s.run("MATCH (n) RETURN count(n) AS c").single()["c"]
        m = s.run("MATCH ()-[e]->() RETURN count(e) AS c").single()["c"]
        schema = sorted(r["name"] for r in s.run("SHOW INDEXES YIELD name RETURN name"))
        schema += sorted(r["name"] for r in s.run("SHOW CONSTRAINTS YIELD name RETURN name"))
        # Tokens a write could add without adding a node (CALL db.createLabel and friends), and what the system
        # database shows: users, roles, databases.
        schema += sorted(r["label"] for r in s.run("CALL db.labels() YIELD label RETURN label"))
        schema += sorted(r["t"] for r in s.run("CALL db.relationshipTypes() YIELD relationshipType AS t RETURN t"))
        schema += sorted(r["k"] for r in s.run("CALL db.propertyKeys() YIELD propertyKey AS k RETURN k"))
    with driver.session(database="system") as s:
        schema += sorted(str(r.values()) for r in s.run("SHOW USERS YIELD user, roles RETURN user, roles"))
        schema += sorted(r["name"] for r in s.run("SHOW DATABASES YIELD name RETURN name"))
    return n, m, h.hexdigest(), tuple(schema)


@pytest.fixture
def runner(neo4j_driver, settings, redis_client, unique_id):  # noqa: ANN001, ANN201
    slots = SharedSlots(redis_client, 2, CypherRunner.lease_s(LIMITS), key=f"atlas:test:{unique_id}")
    yield CypherRunner(neo4j_driver, settings.neo4j_database, LIMITS, slots)
    assert slots.held() == 0  # every query, refused or not, gave its slot back


def test_hostile_corpus_is_refused_names_the_rule_and_changes_nothing(runner, neo4j_driver, settings):
    before = fingerprint(neo4j_driver, settings.neo4j_database)
    wrong = []
    for query, rule in HOSTILE:
        t0 = time.perf_counter()
        try:
            result = runner.run(query)
        except CypherRefused as exc:
            assert exc.message, query
            if rule is not None and exc.rule != rule:
                wrong.append((query, rule, exc.rule, exc.message))
        else:
            wrong.append((query, rule, "ran", result.rows[:3]))
        assert time.perf_counter() - t0 < LIMITS.timeout_s + SLACK_S, query
    assert wrong == [], "\n".join(map(repr, wrong))
    assert fingerprint(neo4j_driver, settings.neo4j_database) == before


def test_expensive_reads_are_stopped_by_the_timeout(runner, neo4j_driver, settings, store):
    from tests.query.graphs import make_records
    from workers.store.records import NodeRow

    # Enough nodes that a 4-way cartesian product cannot finish in 2 s.
    nodes = [NodeRow(f"feat:L0.mlp:p0:f{i}", "feature", 0, 0, feature=i, dictionary="L0.mlp", activation=1.0)
             for i in range(300)]
    store(make_records([(nodes, [(nodes[i].node_id, nodes[i + 1].node_id) for i in range(299)], [0.5] * 299)]))
    before = fingerprint(neo4j_driver, settings.neo4j_database)
    outcomes = []
    for query in EXPENSIVE:
        t0 = time.perf_counter()
        try:
            result = runner.run(query)
            assert result.rows, query  # finished in time: fine, it is a read
            outcomes.append("finished")
        except CypherRefused as exc:
            assert exc.rule == "timeout", (query, exc)
            assert exc.status == 408
            outcomes.append("timeout")
        assert time.perf_counter() - t0 < LIMITS.timeout_s + SLACK_S, query
    assert outcomes[:2] == ["timeout", "timeout"]  # these two cannot finish in 2 s on any machine
    assert fingerprint(neo4j_driver, settings.neo4j_database) == before


def test_benign_reads_run_with_parameters_and_caps(runner):
    assert runner.run("RETURN 'CREATE (:Pwned)' AS s, $x AS x", {"x": "x'}) CREATE (:Pwned) //"}).rows == \
        [["CREATE (:Pwned)", "x'}) CREATE (:Pwned) //"]]
    assert runner.run("MATCH (n) RETURN n.set AS set LIMIT 1").columns == ["set"]
    assert runner.run("// a comment that says DELETE\nRETURN 1 AS one").rows == [[1]]
    labels = runner.run("CALL db.labels() YIELD label RETURN label")
    assert "ProcedureCall" in labels.plan_operators
    # a bounded expansion runs; from a few start nodes, so its cost does not grow with what earlier tests stored
    bounded = runner.run("MATCH (a) WITH a LIMIT 5 MATCH (a)-[*1..2]->(b) RETURN count(*) AS c")
    assert "VarLengthExpand(All)" in bounded.plan_operators
    rows = runner.run("UNWIND range(1, 1000) AS x RETURN x")
    assert (len(rows.rows), rows.truncated_by) == (LIMITS.max_rows, "max_rows")
    assert [r[0] for r in rows.rows] == list(range(1, LIMITS.max_rows + 1))
    fewer = runner.run("UNWIND range(1, 1000) AS x RETURN x", max_rows=3)
    assert (len(fewer.rows), fewer.truncated) == (3, True)
    big = runner.run(f"UNWIND range(1, 100) AS x RETURN x, '{'x' * 1000}' AS s")
    assert big.truncated_by == "max_bytes" and sum(len(json.dumps(r)) for r in big.rows) <= LIMITS.max_bytes
    loops = runner.run("MATCH (n) WITH n LIMIT 1 RETURN [k IN keys(n) WHERE k <> ''] AS k, "
                       "[x IN range(1, 10) | x * 2] AS r, any(v IN $v WHERE v > 1) AS a", {"v": [1, 2]})
    assert loops.rows[0][1:] == [list(range(2, 21, 2)), True]
    # a loop body may use its variable's properties, parameters, literals, and other variables through id()
    bodies = runner.run("MATCH (n) WITH n LIMIT 1 RETURN [m IN [n] WHERE id(m) = id(n) | {k: size(keys(m))}] AS m, "
                        "[x IN $v WHERE x > $min | x * 10] AS v", {"v": [1, 2, 3], "min": 1})
    assert len(bodies.rows[0][0]) == 1 and bodies.rows[0][1] == [20, 30]
    whole = runner.run("UNWIND range(1, 3) AS x RETURN x")
    assert whole.truncated is False and whole.rows == [[1], [2], [3]]


def test_each_layer_holds_on_its_own(neo4j_driver, settings):
    db = settings.neo4j_database
    # 1. the plan check alone refuses writes, admin procedures and unbounded expansions the lexer never saw
    with neo4j_driver.session(database=db, default_access_mode=neo4j.READ_ACCESS) as s:
        def explain(q: str):  # noqa: ANN202
            summary = s.run("EXPLAIN " + q).consume()
            return summary.query_type, summary.plan
        for q, rule in [("CREATE (n:Pwned)", "read-only"), ("MATCH (n) SET n.x = 1", "read-only"),
                        ("CALL db.clearQueryCaches()", None), ("CALL dbms.components()", "read-only"),
                        ("LOAD CSV FROM 'file:///etc/passwd' AS l RETURN l", "operator-allowlist"),
                        ("SHOW TRANSACTIONS", "operator-allowlist"),
                        ("CALL db.awaitIndexes(1)", None),
                        ("MATCH (a)-[*]->(b) RETURN a", "bounded-var-length")]:
            with pytest.raises(CypherRefused) as info:
                plan_check(*explain(q), LIMITS)
            if rule:
                assert info.value.rule == rule, q
        assert "Limit" in plan_check(*explain("MATCH (a:Feature)-[r]->(b) RETURN a LIMIT 1"), LIMITS)
    # 2. the READ access mode alone refuses a write that reached the server
    with neo4j_driver.session(database=db, default_access_mode=neo4j.READ_ACCESS) as s:
        with pytest.raises(neo4j.exceptions.ClientError, match="(?i)write|access"):
            s.run("CREATE (:Pwned)").consume()
    assert neo4j_driver.execute_query("MATCH (n:Pwned) RETURN count(n) AS c", database_=db).records[0]["c"] == 0
    # 3. the lexer alone, with keywords hidden in strings and comments not counted
    lexical_check("RETURN 'DELETE' /* SET */ AS x // MERGE", LIMITS)
    with pytest.raises(CypherRefused, match="no-writes"):
        lexical_check("RETURN 1 AS x UNION MATCH (n) DETACH DELETE n RETURN 1 AS x", LIMITS)


def test_concurrency_cap_is_shared_by_runners(neo4j_driver, settings, redis_client, unique_id):
    """Two runners (as in two API processes) on one Redis key: with a cap of 1, the second query is refused
    while the first runs, with a Retry-After no longer than the running query's lease."""
    limits = CypherLimits(timeout_s=1.5)
    key = f"atlas:test:{unique_id}"
    first, second = (CypherRunner(neo4j_driver, settings.neo4j_database, limits,
                                  SharedSlots(redis_client, 1, CypherRunner.lease_s(limits), key=key)) for _ in range(2))
    errors: list[Exception] = []

    def slow() -> None:
        try:
            first.run("UNWIND range(1, 1000000000) AS x WITH x WHERE x % 7 = 100 RETURN count(x)")
        except CypherRefused as exc:
            errors.append(exc)

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 5
    while first.slots.held() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.slots.held() == 1
    with pytest.raises(CypherRefused) as info:
        second.run("RETURN 1")
    assert (info.value.rule, info.value.status) == ("concurrency-cap", 429)
    assert 1 <= info.value.retry_after_s <= CypherRunner.lease_s(limits)
    t.join(10)
    assert [e.rule for e in errors] == ["timeout"]
    assert second.run("RETURN 1 AS one").rows == [[1]]  # the slot was given back
    assert second.slots.held() == 0


def test_a_dead_holder_s_lease_expires(redis_client, unique_id):
    """A process killed while holding a slot (SIGKILL: no finally runs) blocks it only until its lease ends."""
    import os
    import signal
    import subprocess
    import sys

    from workers.settings import get_settings

    key = f"atlas:test:{unique_id}"
    code = ("import redis, sys, time; from service.query.user_cypher import SharedSlots; "
            f"s = SharedSlots(redis.Redis.from_url({get_settings().redis_url!r}), 1, 2.0, key={key!r}); "
            "print(s.acquire(), flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert proc.stdout is not None and len(proc.stdout.readline().strip()) == 32
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    slots = SharedSlots(redis_client, 1, 2.0, key=key)
    with pytest.raises(CypherRefused) as info:
        slots.acquire()
    assert info.value.status == 429 and info.value.retry_after_s in (1, 2)
    time.sleep(2.1)
    token = slots.acquire()  # the dead process's lease has expired
    assert slots.held() == 1
    slots.release(token)
    assert slots.held() == 0


def test_redis_down_refuses_instead_of_skipping_the_cap(neo4j_driver, settings):
    import redis

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)  # nothing listens on port 1
    runner = CypherRunner(neo4j_driver, settings.neo4j_database, LIMITS, SharedSlots(dead, 1, 5.0))
    with pytest.raises(CypherRefused) as info:
        runner.run("RETURN 1")
    assert (info.value.rule, info.value.status) == ("concurrency-cap", 503) and "Redis" in info.value.message


def test_parameters_neo4j_cannot_hold_are_refused(runner):
    for params in ({"x": 2 ** 63}, {"x": [1, {"y": -(2 ** 63) - 1}]}):
        with pytest.raises(CypherRefused) as info:
            runner.run("RETURN $x AS x", params)
        assert info.value.rule == "parameters" and "64-bit" in info.value.message
    assert runner.run("RETURN $x AS x", {"x": 2 ** 63 - 1}).rows == [[2 ** 63 - 1]]


# Reads that enumerate the database, its labels and property keys: what a 'cypher' key could try to find
# secrets with. They run (they are legal reads); the test is that no secret is in what they return.
ENUMERATING = [
    "MATCH (n) RETURN n",
    "MATCH (n) RETURN properties(n) AS p",
    "MATCH (n) WHERE any(k IN keys(n) WHERE toLower(k) CONTAINS 'secret' OR toLower(k) CONTAINS 'sha') "
    "RETURN labels(n) AS l, properties(n) AS p",
    "MATCH (n) WHERE n.name = $name RETURN n",
    "MATCH (n) UNWIND keys(n) AS k WITH k, n[k] AS v WHERE v = $digest RETURN k, v",
    "MATCH ()-[r]->() RETURN properties(r) AS p",
    "MATCH (n:ApiKey) RETURN n",
    "MATCH (n:ApiKey) RETURN properties(n) AS p",
    "CALL db.labels() YIELD label CALL (label) { MATCH (n) WHERE label IN labels(n) RETURN n LIMIT 5 } RETURN label, n",
    "CALL db.labels() YIELD label RETURN label",
    "CALL db.propertyKeys() YIELD propertyKey RETURN propertyKey",
    "CALL db.propertyKeys() YIELD propertyKey MATCH (n) WHERE n[propertyKey] IS NOT NULL "
    "RETURN propertyKey, n[propertyKey] AS v",
    "CALL db.schema.nodeTypeProperties()",
    "CALL db.schema.visualization()",
]


def test_no_query_can_reach_an_api_key_secret(neo4j_driver, settings, redis_client, unique_id):
    """Keys live outside the Neo4j user database (service/auth.py): neither a full dump of the database nor any
    enumerating read through the guarded runner returns a key's secret, its digest or its holder's name."""
    from service.auth import _digest, create_key, delete_key

    key, plain = create_key(redis_client, f"{unique_id}-holder", ("cypher", "admin"))
    secret = plain.split("_", 2)[2]
    needles = {"secret": secret, "digest": _digest(secret), "holder name": f"{unique_id}-holder"}
    wide = CypherLimits(timeout_s=20.0, max_rows=10_000_000, max_bytes=2_000_000_000)
    runner = CypherRunner(neo4j_driver, settings.neo4j_database, wide,
                          SharedSlots(redis_client, 2, CypherRunner.lease_s(wide), key=f"atlas:test:{unique_id}"))
    try:
        # 1. by design: the whole user database (every property of every node and relationship) holds none
        with neo4j_driver.session(database=settings.neo4j_database) as s:
            dump = json.dumps([r.data() for r in s.run("MATCH (n) RETURN labels(n) AS l, properties(n) AS p")]
                              + [r.data() for r in s.run("MATCH ()-[e]->() RETURN properties(e) AS p")], default=str)
        assert dump.count('"p"') > 0
        found = [what for what, needle in needles.items() if needle in dump]
        assert found == [], f"the user database holds a key's {found}"
        # 2. and so nothing a user's query enumerates does either
        for query in ENUMERATING:
            result = runner.run(query, {"name": needles["holder name"], "digest": needles["digest"]})
            assert not result.truncated, query  # the whole answer was read
            text = json.dumps(result.rows, default=str)
            assert [what for what, needle in needles.items() if needle in text] == [], query
    finally:
        delete_key(redis_client, key.key_id)


# Memory- or CPU-heavy reads, sent over HTTP to the app with its production limits (CypherLimits(): 5 s).
# (query, the rules it may be refused with: the memory pool or the timeout stops rows, whichever comes first)
HEAVY_OVER_HTTP: list[tuple[str, set[str]]] = [
    ("UNWIND range(1, 400000000) AS x RETURN collect(x)", {"memory", "timeout"}),
    ("UNWIND range(1, 20000) AS a UNWIND range(1, 20000) AS b RETURN collect([a, b])", {"memory", "timeout"}),
    ("UNWIND range(1, 20000) AS a UNWIND range(1, 20000) AS b WITH a, b ORDER BY a * b DESC RETURN a, b",
     {"memory", "timeout"}),
    ("UNWIND range(1, 100000) AS x WITH collect(toString(x) + 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx') AS xs "
     "UNWIND xs AS a UNWIND xs AS b RETURN count(*)", {"memory", "timeout"}),
    ("WITH 'xxxxxxxxxx' AS s" + " WITH s + s AS s" * 27 + " RETURN size(s)", {"memory", "timeout"}),
    ("RETURN size(reduce(s = '', i IN range(1, 80000000) | s + 'xxxxxxxxxx'))", {"expression-loop"}),
    ("RETURN size([x IN range(1, 2000000000) WHERE x % 7 = 100])", {"range-size"}),
    ("RETURN any(x IN range(1, 2000000000) WHERE x < 0)", {"range-size"}),
    ("UNWIND range(1, 1000000) AS x WITH collect(x) AS xs RETURN size([a IN xs WHERE a < 0])", {"expression-loop"}),
    (EXPENSIVE_BODY, {"loop-body"}),
]


def test_heavy_reads_over_http_get_a_4xx_in_time_and_leave_nothing_running(settings, neo4j_driver, redis_client):
    """With the production limits: every heavy read answers 408/422 naming its rule within the timeout (plus
    slack), nothing is left running on the server (a loop Neo4j does not stop would show in SHOW TRANSACTIONS),
    /healthz stays OK and a small query still answers at once."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.auth import create_key, delete_key

    limits = CypherLimits()
    key, plain = create_key(redis_client, "heavy-reads", ("cypher",))
    before = fingerprint(neo4j_driver, settings.neo4j_database)
    wrong: list[tuple] = []
    try:
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {plain}"}) as client:
            for query, rules in HEAVY_OVER_HTTP:
                t0 = time.perf_counter()
                r = client.post("/cypher", json={"query": query})
                elapsed = time.perf_counter() - t0
                body = r.json()
                if r.status_code not in (408, 422) or body.get("rule") not in rules or not body.get("message") \
                        or elapsed > limits.timeout_s + SLACK_S:
                    wrong.append((query, r.status_code, body.get("rule"), round(elapsed, 1)))
            assert wrong == [], "\n".join(map(repr, wrong))
            running: list[str] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                running = [r["q"] for r in neo4j_driver.execute_query(
                    "SHOW TRANSACTIONS YIELD currentQuery AS q WHERE NOT q STARTS WITH 'SHOW' RETURN q",
                    database_=settings.neo4j_database).records if any(r["q"] == h for h, _ in HEAVY_OVER_HTTP)]
                if not running:
                    break
                time.sleep(0.5)
            assert running == [], f"still running on the server: {running}"
            health = client.get("/healthz")
            assert health.status_code == 200, health.text
            t0 = time.perf_counter()
            assert client.post("/cypher", json={"query": "RETURN 1 AS one"}).json()["rows"] == [[1]]
            assert time.perf_counter() - t0 < 2.0
    finally:
        delete_key(redis_client, key.key_id)
    assert fingerprint(neo4j_driver, settings.neo4j_database) == before


def test_a_memory_heavy_read_is_stopped_by_the_transaction_memory_limit(settings, neo4j_driver, redis_client):
    """A read that passes every static rule and would build ~10 GB (10M strings of 1 KB, collected) is stopped by
    the server's per-transaction memory limit (db.memory.transaction.max, service/runtime/neo4j.py): POST /cypher
    answers 422 rule 'memory' naming the limit, well within the timeout; nothing is left running and /healthz is
    OK after."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.auth import create_key, delete_key
    from service.runtime.neo4j import transaction_memory

    per_tx, total = transaction_memory(settings)
    config = {r["name"]: r["value"] for r in neo4j_driver.execute_query(
        "CALL dbms.listConfig('db.memory.transaction') YIELD name, value RETURN name, value",
        database_=settings.neo4j_database).records}
    assert config["db.memory.transaction.max"] == f"{per_tx / 2 ** 20:.2f}MiB", config
    assert config["db.memory.transaction.total.max"] == f"{total / 2 ** 20:.2f}MiB", config
    query = "UNWIND range(1, 10000000) AS x RETURN collect(toString(x) + '" + "x" * 1000 + "') AS xs"
    limits = CypherLimits()
    key, plain = create_key(redis_client, "memory-limit", ("cypher",))
    try:
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {plain}"}) as client:
            t0 = time.perf_counter()
            r = client.post("/cypher", json={"query": query})
            elapsed = time.perf_counter() - t0
            body = r.json()
            assert (r.status_code, body.get("rule")) == (422, "memory"), body
            assert "db.memory.transaction.max" in body["message"], body
            assert f"limit {per_tx / 2 ** 20:.1f} MiB" in body["message"], body
            assert elapsed < limits.timeout_s + SLACK_S, elapsed
            running = neo4j_driver.execute_query(
                "SHOW TRANSACTIONS YIELD currentQuery AS q WHERE q = $q RETURN q", q=query,
                database_=settings.neo4j_database).records
            assert running == []
            assert client.get("/healthz").status_code == 200
            assert client.post("/cypher", json={"query": "RETURN 1 AS one"}).json()["rows"] == [[1]]
    finally:
        delete_key(redis_client, key.key_id)
