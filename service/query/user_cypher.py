"""User Cypher for ``POST /cypher``: read-only and bounded, and every refusal names the rule it hit.

Layers, each enough on its own for the cases it covers (the driver docs say not to rely on access mode
alone, shared/REFERENCE.md):

1. Lexical (comments, strings and backtick names removed first, so they cannot hide or fake a keyword):
   one statement, no query options / EXPLAIN / PROFILE prefix, no write or admin keywords, no LOAD CSV,
   SHOW, TERMINATE, USE, CALL ... IN TRANSACTIONS.
2. ``EXPLAIN`` in a READ session: the planner's ``query_type`` must be ``'r'``; every plan operator must be
   on :data:`READ_OPERATORS`; procedure calls only from :data:`PROCEDURE_ALLOWLIST`; every
   variable-length / quantified / shortest-path pattern must have an upper bound <= ``max_hops``.
3. Execution in a READ-access session with a server-side per-query timeout (``neo4j.Query(timeout=)``),
   row and byte caps (the stream is cut, and the answer says so), and a concurrency cap shared by every API
   process (:class:`SharedSlots`, leases in Redis that expire, so a killed process gives its slots back).
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import neo4j
import redis
from neo4j import Driver
from neo4j.graph import Node, Path, Relationship

# Read operators of Neo4j 5.26's planner (slotted/pipelined runtimes), without the '@neo4j' suffix.
READ_OPERATORS: frozenset[str] = frozenset({
    "ProduceResults", "Argument", "AllNodesScan", "NodeByLabelScan", "UnionNodeByLabelsScan",
    "IntersectionNodeByLabelsScan", "SubtractionNodeByLabelsScan", "NodeByIdSeek", "NodeByElementIdSeek",
    "NodeIndexSeek", "NodeUniqueIndexSeek", "NodeIndexSeekByRange", "NodeUniqueIndexSeekByRange", "NodeIndexScan",
    "NodeIndexContainsScan", "NodeIndexEndsWithScan", "MultiNodeIndexSeek", "AssertingMultiNodeIndexSeek",
    "DirectedRelationshipByIdSeek", "UndirectedRelationshipByIdSeek", "DirectedRelationshipByElementIdSeek",
    "UndirectedRelationshipByElementIdSeek", "DirectedRelationshipIndexSeek", "UndirectedRelationshipIndexSeek",
    "DirectedRelationshipIndexScan", "UndirectedRelationshipIndexScan", "DirectedRelationshipIndexSeekByRange",
    "UndirectedRelationshipIndexSeekByRange", "DirectedRelationshipIndexContainsScan",
    "UndirectedRelationshipIndexContainsScan", "DirectedRelationshipIndexEndsWithScan",
    "UndirectedRelationshipIndexEndsWithScan", "DirectedRelationshipTypeScan", "UndirectedRelationshipTypeScan",
    "DirectedUnionRelationshipTypesScan", "UndirectedUnionRelationshipTypesScan", "DirectedAllRelationshipsScan",
    "UndirectedAllRelationshipsScan", "NodeCountFromCountStore", "RelationshipCountFromCountStore",
    "Expand(All)", "Expand(Into)", "OptionalExpand(All)", "OptionalExpand(Into)", "VarLengthExpand(All)",
    "VarLengthExpand(Into)", "VarLengthExpand(Pruning)", "VarLengthExpand(Pruning,BFS)", "BFSPruningVarExpand",
    "ShortestPath", "StatefulShortestPath(All)", "StatefulShortestPath(Into)", "Repeat(Trail)", "Repeat(Walk)",
    "BidirectionalRepeat(Trail)", "Trail", "ProjectEndpoints", "Filter", "Projection", "Aggregation",
    "EagerAggregation", "OrderedAggregation", "Distinct", "OrderedDistinct", "Sort", "PartialSort", "Top",
    "PartialTop", "Top1WithTies", "Limit", "ExhaustiveLimit", "Skip", "Apply", "SemiApply", "AntiSemiApply",
    "LetSemiApply", "LetAntiSemiApply", "SelectOrSemiApply", "SelectOrAntiSemiApply", "LetSelectOrSemiApply",
    "LetSelectOrAntiSemiApply", "RollUpApply", "ConditionalApply", "AntiConditionalApply", "CartesianProduct",
    "NodeHashJoin", "ValueHashJoin", "NodeLeftOuterHashJoin", "NodeRightOuterHashJoin", "Optional", "Anti",
    "Union", "OrderedUnion", "Unwind", "PartitionedUnwind", "Eager", "CacheProperties", "AssertSameNode",
    "AssertSameRelationship", "TriadicSelection", "TriadicBuild", "TriadicFilter", "NullifyMetadata",
    "ProcedureCall",  # further checked against PROCEDURE_ALLOWLIST
})
VAR_LENGTH_OPERATORS = ("VarLengthExpand", "BFSPruningVarExpand", "ShortestPath", "StatefulShortestPath", "Repeat",
                        "BidirectionalRepeat", "Trail")
PROCEDURE_ALLOWLIST: frozenset[str] = frozenset({
    "db.labels", "db.relationshipTypes", "db.propertyKeys", "db.schema.visualization", "db.schema.nodeTypeProperties",
    "db.schema.relTypeProperties",
})

# Keywords that write or administer; found as bare words (not property keys, labels or map keys).
_WRITE_WORDS = {"CREATE", "MERGE", "DELETE", "DETACH", "SET", "REMOVE", "DROP", "FOREACH", "ALTER", "GRANT",
                "DENY", "REVOKE", "RENAME", "START", "STOP", "ENABLE", "DEALLOCATE", "REALLOCATE", "INSERT",
                "FINISH"}
_RULE_WORDS = {"LOAD": "no-load-csv", "SHOW": "no-show", "TERMINATE": "no-terminate", "USE": "no-use",
               "EXPLAIN": "no-explain-profile", "PROFILE": "no-explain-profile", "CYPHER": "no-query-options",
               "PERIODIC": "no-writes"}
_TOKEN = re.compile(r"""
    (?P<lc>//[^\n]*) | (?P<bc>/\*.*?(\*/|\Z)) |
    (?P<str>'(?:[^'\\]|\\.)*(?:'|\Z) | "(?:[^"\\]|\\.)*(?:"|\Z)) | (?P<bt>`(?:[^`]|``)*(?:`|\Z)) |
    (?P<word>[^\W\d]\w*) | (?P<semi>;) | (?P<other>.)
""", re.VERBOSE | re.DOTALL)


@dataclass(frozen=True)
class CypherLimits:
    timeout_s: float = 5.0
    max_rows: int = 1_000
    max_bytes: int = 2_000_000
    max_hops: int = 6  # upper bound allowed on variable-length patterns
    max_query_chars: int = 20_000
    max_param_bytes: int = 100_000
    max_range_items: int = 100_000  # elements of a range() that is not streamed row by row (see expression_check)


class CypherRefused(Exception):
    """The query broke a rule; ``rule`` names it (shown to the user with ``message``)."""

    def __init__(self, rule: str, message: str, status: int = 422, retry_after_s: int | None = None) -> None:
        super().__init__(f"[{rule}] {message}")
        self.rule = rule
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s  # sent as the Retry-After header (429, 503)


@dataclass
class CypherResult:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    truncated_by: str | None  # "max_rows" | "max_bytes" | None
    elapsed_ms: float
    plan_operators: list[str] = field(default_factory=list)


def lexical_check(query: str, limits: CypherLimits) -> None:
    """Rules that need no server; raises CypherRefused."""
    if not query.strip():
        raise CypherRefused("non-empty", "the query is empty")
    if len(query) > limits.max_query_chars:
        raise CypherRefused("query-size", f"the query has {len(query):,} characters; the limit is "
                                          f"{limits.max_query_chars:,}")
    tokens: list[tuple[str, str]] = []
    for m in _TOKEN.finditer(query):
        kind = m.lastgroup or "other"
        if kind in ("lc", "bc"):
            continue
        if kind == "other" and m.group().isspace():
            continue
        tokens.append((kind, m.group()))
    significant = [t for t in tokens if t[0] != "semi"]
    for i, (kind, _text) in enumerate(tokens):
        if kind == "semi" and any(k != "semi" for k, _ in tokens[i + 1:]):
            raise CypherRefused("single-statement", "only one statement per request (found ';' between statements)")
    for i, (kind, text) in enumerate(significant):
        if kind != "word":
            continue
        prev = significant[i - 1][1] if i else ""
        nxt = significant[i + 1][1] if i + 1 < len(significant) else ""
        # `n.set`, `:Set`, `{set: 1}` and `AS set` are names, not keywords (the plan check still applies).
        if prev in (".", ":", "$") or prev.upper() == "AS" or (nxt == ":" and prev in ("{", ",")):
            continue
        word = text.upper()
        if word in _WRITE_WORDS:
            raise CypherRefused("no-writes", f"'{text}' writes or administers the database; /cypher is read-only")
        if word in _RULE_WORDS:
            rule = _RULE_WORDS[word]
            raise CypherRefused(rule, {
                "no-load-csv": "LOAD CSV reads files and URLs from the server; not allowed",
                "no-show": "SHOW commands (transactions, users, settings, ...) are not allowed",
                "no-terminate": "TERMINATE is not allowed",
                "no-use": "USE (choosing another database or graph) is not allowed",
                "no-explain-profile": "EXPLAIN/PROFILE are added by the server; send the bare query",
                "no-query-options": "CYPHER query options (runtime, planner, version) are not allowed",
                "no-writes": "periodic commit writes; /cypher is read-only",
            }[rule])
        if word == "TRANSACTIONS" and prev.upper() == "IN":
            raise CypherRefused("no-writes", "CALL { ... } IN TRANSACTIONS is for batched writes; not allowed")
    blanked = _TOKEN.sub(lambda m: {"lc": " ", "bc": " ", "str": "''", "bt": "_q"}.get(m.lastgroup or "", m.group()),
                         query)
    expression_check(blanked, limits)


# Neo4j 5.26 checks a transaction's timeout between rows, never inside one expression: a loop inside an
# expression (reduce, a list comprehension or predicate) over a huge list, or a reduce whose accumulator grows
# (a string built in a loop costs the square of its length), runs on after its timeout, holding a core, and a
# TERMINATE cannot stop it either (measured: 'Terminated' for minutes while still running). Its memory is not
# tracked by the transaction pool. So such loops are limited before they reach the server: no reduce, no loop
# inside a loop, a loop only over lists that are small by construction, and a range() that is not streamed
# row by row (by UNWIND) only with literal bounds of at most max_range_items elements. Rows (UNWIND, MATCH,
# aggregation) stay unlimited here: the timeout and the memory pool stop them.
_LOOP_START = re.compile(r"(?i)(\[\s*|(?<![\w.:$])(?:all|any|none|single)\s*\(\s*)(\w+)\s+IN\b\s*")
_LOOP_SOURCE = re.compile(r"(?i)(?:(?:keys|labels|nodes|relationships|range)\s*\(|\[|\$\w+)")
_RANGE = re.compile(r"(?i)(?<![\w.:$])range\s*\(")
_RANGE_ARGS = re.compile(r"\(\s*(-?\s*\d+)\s*,\s*(-?\s*\d+)\s*(?:,\s*(-?\s*\d+)\s*)?\)")
_UNWIND_BEFORE = re.compile(r"(?i)\bUNWIND\s*$")
# A loop body's cost is per element times what it touches; its own variable, parameters (<= max_param_bytes) and
# literals (<= max_query_chars) are small, but any other variable may hold a huge value built row by row (a
# string doubled 20 times, a collected list): 100,000 elements x replace() over a 10 MB string ran on for minutes
# after the timeout (measured, Neo4j 5.26). So a body names no other variable except as id(v) / elementId(v).
_BODY_NAME = re.compile(r"(?<![\w.:$])([^\W\d]\w*)")
_BODY_WORDS = frozenset({"WHERE", "AND", "OR", "XOR", "NOT", "IS", "NULL", "TRUE", "FALSE", "IN", "STARTS", "ENDS",
                         "WITH", "CONTAINS", "CASE", "WHEN", "THEN", "ELSE", "END", "DISTINCT", "NAN", "INF",
                         "INFINITY"})
_CONSTANT_COST_OF = re.compile(r"(?i)(?:\bid|\belementId)\s*\(\s*$")


def _closing(text: str, start: int) -> int:
    """Index just past the bracket that closes the one opened at ``start`` (strings are already blanked)."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def expression_check(text: str, limits: CypherLimits) -> None:
    """Loops inside one expression, on the query with its strings, comments and quoted names blanked (see the
    comment above). Raises CypherRefused with rule ``expression-loop`` or ``range-size``."""
    hint = "stream the rows with UNWIND and aggregate them (sum, collect, count), which the timeout stops"
    if re.search(r"(?i)(?<![\w.:$])reduce\s*\(", text):
        raise CypherRefused("expression-loop", "reduce() is not allowed: Neo4j cannot stop a loop inside one "
                                               f"expression at the timeout; {hint}")
    loops = [(m.start(), _closing(text, m.start() + len(m.group(1).rstrip()) - 1), m.end(), m.group(2))
             for m in _LOOP_START.finditer(text)]
    for start, end, source_at, variable in loops:
        if any(start < other < end for other, _, _, _ in loops):
            raise CypherRefused("expression-loop", "a list comprehension or predicate inside another is not "
                                                   f"allowed: Neo4j cannot stop it at the timeout; {hint}")
        source = _LOOP_SOURCE.match(text, source_at)
        if not source:
            raise CypherRefused("expression-loop", "a list comprehension or predicate (x IN list) may only loop "
                                                   "over keys(), labels(), nodes(), relationships(), a range() "
                                                   f"with literal bounds, a list literal or a parameter; {hint}")
        # the body starts after the source: its closing bracket, or the end of the parameter's name
        body_at = _closing(text, source.end() - 1) if text[source.end() - 1] in "([" else source.end()
        _check_loop_body(text, body_at, end - 1, variable, hint)
    for m in _RANGE.finditer(text):
        if _UNWIND_BEFORE.search(text, 0, m.start()):
            continue  # streamed row by row: the timeout stops it
        args = _RANGE_ARGS.match(text, m.end() - 1)
        if args is None:
            raise CypherRefused("range-size", "range() outside UNWIND needs integer literal bounds (at most "
                                              f"{limits.max_range_items:,} elements); UNWIND range(...) streams "
                                              "any size")
        lo, hi, step = (int(g.replace(" ", "")) if g else 1 for g in args.groups())
        n = 0 if step == 0 else max(0, (hi - lo) // step + 1)
        if step == 0 or n > limits.max_range_items:
            raise CypherRefused("range-size", f"range({lo}, {hi}, {step}) outside UNWIND has "
                                              f"{'no valid step' if step == 0 else f'{n:,} elements'}; the limit "
                                              f"is {limits.max_range_items:,} (UNWIND range(...) streams any size)")


def _check_loop_body(text: str, at: int, end: int, variable: str, hint: str) -> None:
    """The body of a loop over ``variable`` (``text[at:end]``: its WHERE and | parts) names no other variable
    except through id() / elementId(), and builds no range (see _BODY_NAME)."""
    body = text[at:end]
    for m in _BODY_NAME.finditer(body):
        name = m.group(1)
        after = body[m.end():].lstrip()
        if name == variable or name.upper() in _BODY_WORDS:
            continue
        if after.startswith("("):  # a function
            if name.lower() == "range":
                raise CypherRefused("loop-body", "range() inside a list comprehension or predicate is not allowed: "
                                                 f"Neo4j cannot stop the loop at the timeout; {hint}")
            continue
        if after.startswith(":") and body[:m.start()].rstrip().endswith(("{", ",")):
            continue  # a map key
        if _CONSTANT_COST_OF.search(body, 0, m.start()):
            continue
        raise CypherRefused("loop-body", f"the body of the loop over {variable!r} uses {name!r}: a list comprehension "
                                         "or predicate may only use its own variable, parameters and literals (other "
                                         "variables only as id(v) or elementId(v)), because Neo4j cannot stop a "
                                         f"loop at the timeout and {name!r} may hold a huge value; {hint}")


def _walk(plan: dict) -> list[dict]:
    out = [plan]
    for child in plan.get("children", []) or []:
        out.extend(_walk(child))
    return out


def _upper_bounds(details: str) -> list[int | None]:
    """Upper bounds of every var-length pattern in an operator's Details (None = unbounded)."""
    bounds: list[int | None] = []
    for m in re.finditer(r"\*(\d*)(\.\.)?(\d*)\s*\]", details):
        lo, dots, hi = m.groups()
        bounds.append(int(hi) if dots and hi else (None if dots or not lo else int(lo)))
    for m in re.finditer(r"\{\s*(\d*)\s*(,)?\s*(\d*)\s*\}", details):
        lo, comma, hi = m.groups()
        if not lo and not hi:
            continue  # a map literal, not a quantifier
        bounds.append(int(hi) if comma and hi else (None if comma else int(lo)))
    return bounds


def plan_check(query_type: str | None, plan: dict | None, limits: CypherLimits) -> list[str]:
    """Rules on the planner's answer to EXPLAIN; returns the operator names. Raises CypherRefused."""
    if query_type != "r":
        raise CypherRefused("read-only", f"the planner classifies this query as {query_type!r}; only read "
                                         "queries ('r') are allowed")
    if plan is None:
        raise CypherRefused("plan-required", "the server returned no plan for EXPLAIN; cannot vet the query")
    names: list[str] = []
    for op in _walk(plan):
        name = str(op.get("operatorType", "")).split("@", 1)[0]
        names.append(name)
        details = str((op.get("args") or op.get("arguments") or {}).get("Details") or "")
        if name not in READ_OPERATORS:
            raise CypherRefused("operator-allowlist", f"plan operator {name!r} is not on the read allowlist")
        if name == "ProcedureCall":
            proc = details.split("(", 1)[0].strip()
            if proc not in PROCEDURE_ALLOWLIST:
                raise CypherRefused("procedure-allowlist", f"procedure {proc!r} is not allowed; allowed: "
                                                           f"{', '.join(sorted(PROCEDURE_ALLOWLIST))}")
        if name.startswith(VAR_LENGTH_OPERATORS):
            bounds = _upper_bounds(details)
            if not bounds:
                raise CypherRefused("bounded-var-length", f"cannot read the length bound of {name} ({details!r}); "
                                                          f"write it as -[*1..{limits.max_hops}]->")
            for b in bounds:
                if b is None or b > limits.max_hops:
                    raise CypherRefused("bounded-var-length", f"variable-length pattern in {name} has upper bound "
                                        f"{'none' if b is None else b}; give one <= {limits.max_hops} "
                                        f"(e.g. -[*1..{limits.max_hops}]->)")
    return names


def _out_of_range_int(value: Any) -> int | None:
    """An integer Neo4j cannot hold (it has 64-bit integers), anywhere inside a parameter value."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if not -(2 ** 63) <= value < 2 ** 63 else None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for v in items:
        bad = _out_of_range_int(v)
        if bad is not None:
            return bad
    return None


def _check_params(params: dict[str, Any], limits: CypherLimits) -> None:
    try:
        size = len(json.dumps(params))
    except (TypeError, ValueError) as exc:
        raise CypherRefused("parameters", f"parameters must be JSON values: {exc}") from None
    if size > limits.max_param_bytes:
        raise CypherRefused("parameters", f"parameters are {size:,} bytes of JSON; the limit is "
                                          f"{limits.max_param_bytes:,}")
    bad = _out_of_range_int(params)
    if bad is not None:
        raise CypherRefused("parameters", f"integer parameter {bad} is outside Neo4j's 64-bit range")


def to_json(value: Any) -> Any:
    """A Neo4j value as JSON (nodes, relationships and paths as dicts; temporal values as ISO strings)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Node):
        return {"element_id": value.element_id, "labels": sorted(value.labels),
                "properties": {k: to_json(v) for k, v in value.items()}}
    if isinstance(value, Relationship):
        return {"element_id": value.element_id, "type": value.type,
                "start": value.start_node.element_id if value.start_node else None,
                "end": value.end_node.element_id if value.end_node else None,
                "properties": {k: to_json(v) for k, v in value.items()}}
    if isinstance(value, Path):
        return {"nodes": [to_json(n) for n in value.nodes], "relationships": [to_json(r) for r in value.relationships]}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode()
    return str(value)


# Acquire a lease when fewer than ARGV[1] unexpired ones exist. Leases are members of a sorted set scored by
# their expiry in Redis' own clock (TIME), so API processes on hosts with different clocks agree, and a lease
# of a process that died is dropped once it expires. Returns {1, token} or {0, seconds until the first expiry}
# (as a string: Lua numbers become integers on the way out).
_ACQUIRE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000) + 1000)
  return {1, ARGV[3]}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tostring(tonumber(first[2]) - t)}
"""


class SharedSlots:
    """At most ``cap`` user queries at once across every API process that shares this Redis and ``key``.

    Each running query holds a lease of ``lease_s`` seconds; it is released when the query ends and expires
    on its own if the process holding it dies, so slots never leak. The lease must outlast a query: the
    runner sizes it from the per-query timeout (EXPLAIN and run each have one) plus a margin.
    """

    def __init__(self, client: redis.Redis, cap: int, lease_s: float, key: str = "atlas:cypher:leases") -> None:
        if cap < 1:
            raise ValueError(f"the /cypher concurrency cap must be >= 1, not {cap}")
        self.client, self.cap, self.lease_s, self.key = client, cap, lease_s, key
        self._acquire = client.register_script(_ACQUIRE)

    def acquire(self) -> str:
        """A lease token; raises CypherRefused 429 (Retry-After: when the oldest lease ends at the latest), or
        503 when Redis cannot be asked (the cap is not skipped silently)."""
        try:
            ok, value = self._acquire(keys=[self.key], args=[self.cap, self.lease_s, uuid.uuid4().hex])
        except (redis.exceptions.RedisError, OSError) as exc:
            raise CypherRefused("concurrency-cap", f"the shared concurrency cap cannot be checked: Redis is not "
                                                   f"reachable ({exc}); retry shortly", status=503,
                                retry_after_s=1) from None
        if int(ok) == 1:
            return value.decode() if isinstance(value, bytes) else str(value)
        wait = max(1, math.ceil(float(value)))
        raise CypherRefused("concurrency-cap", f"{self.cap} user queries are already running on this service; "
                                               f"retry in a moment (a slot is free in at most {wait} s)",
                            status=429, retry_after_s=wait)

    def release(self, token: str) -> None:
        try:
            self.client.zrem(self.key, token)
        except (redis.exceptions.RedisError, OSError):
            pass  # the lease expires by itself; the query's answer matters more than an early release

    def held(self) -> int:
        """Unexpired leases now (for tests and monitoring)."""
        now_s, now_us = self.client.time()
        return int(self.client.zcount(self.key, f"({now_s + now_us / 1e6}", "+inf"))


# Added to a lease beyond its query's two timeouts (EXPLAIN, run): connection set-up, streaming, JSON.
LEASE_MARGIN_S = 5.0


class CypherRunner:
    """Vets and runs user queries. ``slots`` is the concurrency cap (none: uncapped, for library use)."""

    def __init__(self, driver: Driver, database: str | None = None, limits: CypherLimits | None = None,
                 slots: SharedSlots | None = None) -> None:
        self.driver = driver
        self.database = database
        self.limits = limits or CypherLimits()
        self.slots = slots

    @staticmethod
    def lease_s(limits: CypherLimits) -> float:
        """How long a query can hold a slot: its EXPLAIN and its run each end at the timeout."""
        return 2 * limits.timeout_s + LEASE_MARGIN_S

    def explain(self, query: str, params: dict[str, Any]) -> list[str]:
        """Lexical and plan checks; returns the plan's operator names."""
        lexical_check(query, self.limits)
        _check_params(params, self.limits)
        try:
            with self.driver.session(database=self.database, default_access_mode=neo4j.READ_ACCESS) as session:
                summary = session.run(neo4j.Query("EXPLAIN " + query, timeout=self.limits.timeout_s), params).consume()
        except neo4j.exceptions.CypherSyntaxError as exc:
            raise CypherRefused("syntax", f"the server could not parse the query: {exc.message}") from None
        except neo4j.exceptions.ClientError as exc:
            raise CypherRefused("explain", f"the server refused to plan the query ({exc.code}): {exc.message}") from None
        return plan_check(summary.query_type, summary.plan, self.limits)

    def run(self, query: str, params: dict[str, Any] | None = None, *, max_rows: int | None = None) -> CypherResult:
        params = dict(params or {})
        max_rows = self.limits.max_rows if max_rows is None else min(max_rows, self.limits.max_rows)
        token = self.slots.acquire() if self.slots is not None else None
        try:
            t0 = time.perf_counter()
            operators = self.explain(query, params)
            rows: list[list[Any]] = []
            n_bytes = 0
            truncated_by: str | None = None
            try:
                with self.driver.session(database=self.database, default_access_mode=neo4j.READ_ACCESS) as session:
                    result = session.run(neo4j.Query(query, timeout=self.limits.timeout_s), params)
                    columns = list(result.keys())
                    for record in result:
                        if len(rows) >= max_rows:
                            truncated_by = "max_rows"
                            break
                        row = [to_json(v) for v in record.values()]
                        n_bytes += len(json.dumps(row))
                        if n_bytes > self.limits.max_bytes:
                            truncated_by = "max_bytes"
                            break
                        rows.append(row)
                    # Leaving the session discards the rest of the stream and ends the transaction.
            except neo4j.exceptions.Neo4jError as exc:
                raise self._mapped(exc) from None
            return CypherResult(columns=columns, rows=rows, truncated=truncated_by is not None,
                                truncated_by=truncated_by, elapsed_ms=(time.perf_counter() - t0) * 1e3,
                                plan_operators=operators)
        finally:
            if token is not None and self.slots is not None:
                self.slots.release(token)

    def _mapped(self, exc: neo4j.exceptions.Neo4jError) -> CypherRefused:
        """The refusal for a server error while the query ran."""
        code = exc.code or ""
        if "MemoryPool" in code or "OutOfMemory" in code:  # the transaction memory pool stopped it: the query's fault
            # Neo4j's message names the limit and its size ("... more than the limit 192.0 MiB ...
            # db.memory.transaction.max threshold reached"; service/runtime/neo4j.py sets it).
            return CypherRefused("memory", f"the query needs more memory than the server allows one transaction "
                                           f"({code}: {exc.message}); aggregate less, or add LIMIT")
        if "TransactionTimedOut" in code or "Terminated" in code or (
                isinstance(exc, neo4j.exceptions.TransientError) and "Timed" in code):
            return CypherRefused("timeout", f"the query ran longer than {self.limits.timeout_s:g} s and was stopped",
                                 status=408)
        if isinstance(exc, neo4j.exceptions.ClientError) and ("AccessMode" in code or "Forbidden" in code):
            return CypherRefused("read-only", f"the server refused a write: {exc.message}")
        status = 503 if isinstance(exc, neo4j.exceptions.TransientError) else 422
        return CypherRefused("execution", f"the query failed ({code}): {exc.message}", status=status)
