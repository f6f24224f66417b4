"""API keys: hashed at rest in Redis, checked by a FastAPI dependency on every write endpoint and /cypher.

A key is ``ca_<key_id>_<secret>``. Where it is stored is a security decision: ``POST /cypher`` may read the
whole Neo4j user database (Community has one user database and no roles), so nothing a user must not read
may live there. The keys live in Redis instead, which user Cypher cannot reach and which is already a
required service with append-only persistence (``service/runtime/redis.py``): one hash per key,
``atlas:apikey:<key_id>`` = ``{name, scopes, secret_sha256, created_at, revoked}``, and a sorted set
``atlas:apikeys`` (key_id by creation time) for listing. The secret is 32 random bytes, so a plain SHA-256
is enough (no password stretching needed: there is nothing to brute-force), and comparison is constant-time.
The plaintext is shown once, at creation.

``key_id`` (16 hex digits) is the key's public, stable name: it identifies a key, it does not authenticate
(the secret does), so data in Neo4j may record it (``Corpus.owner_key_id``, ``Analysis.owner_key_id``, who
set a label). Keys created before this move lived as ``(:ApiKey)`` nodes; :func:`move_keys_out_of_neo4j`
moves them (API start-up and every ``atlas keys`` command run it; it is idempotent).

Scopes: ``cypher`` (POST /cypher), ``write`` (create corpora/jobs/analyses), ``admin`` (any corpus).
Keys are scoped to the corpora they created: a corpus records ``owner_key_id``; :func:`authorize_corpus`
answers 403 to any other non-admin key.

How a route uses it (the pipeline's write endpoints should do the same)::

    from service.auth import ApiKey, require_scope
    @router.post("/corpora")
    def create(..., key: ApiKey = Depends(require_scope("write"))): ...
        # store key.key_id as the corpus' owner_key_id; before changing a corpus:
        authorize_corpus(driver, key, corpus_id, database)

401 = no key, malformed or unknown or revoked key (with ``WWW-Authenticate: Bearer``); 403 = a valid key
without the scope, or not the owner of the corpus; 503 = Redis, where keys live, does not answer.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from fastapi import HTTPException, Request
from neo4j import Driver

SCOPES = ("cypher", "write", "admin")
_KEY = re.compile(r"ca_([0-9a-f]{16})_([A-Za-z0-9_\-]{20,100})")
_INDEX = "atlas:apikeys"


def _record(key_id: str) -> str:
    return f"atlas:apikey:{key_id}"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scopes: tuple[str, ...]

    def has(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _text(fields: dict) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()}


# Atomic: a key is written whole (hash and index entry) or not at all, and never over an existing id.
_STORE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'scopes', ARGV[2], 'secret_sha256', ARGV[3], 'created_at', ARGV[4],
           'revoked', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
return 1
"""


def _store(r: redis.Redis, key_id: str, name: str, scopes: list[str], digest: str, created_at: float,
           revoked: bool) -> bool:
    """Write one key unless ``key_id`` exists already; True if written."""
    return bool(r.eval(_STORE, 2, _record(key_id), _INDEX, name, ",".join(scopes), digest, repr(created_at),
                       "1" if revoked else "0", key_id))


def create_key(r: redis.Redis, name: str, scopes: tuple[str, ...] = ("cypher", "write")) -> tuple[ApiKey, str]:
    """Create a key; returns it and its plaintext (the only time the plaintext exists)."""
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; choose from {', '.join(SCOPES)}")
    if not scopes:
        raise ValueError("a key needs at least one scope")
    while True:
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        if _store(r, key_id, name, list(scopes), _digest(secret), time.time(), revoked=False):
            return ApiKey(key_id, name, tuple(scopes)), f"ca_{key_id}_{secret}"


def revoke_key(r: redis.Redis, key_id: str) -> bool:
    if not r.exists(_record(key_id)):
        return False
    r.hset(_record(key_id), "revoked", "1")
    return True


def delete_key(r: redis.Redis, key_id: str) -> None:
    """Forget a key entirely (tests clean up with this; operators revoke, which keeps the record)."""
    pipe = r.pipeline(transaction=True)
    pipe.delete(_record(key_id))
    pipe.zrem(_INDEX, key_id)
    pipe.execute()


def list_keys(r: redis.Redis) -> list[dict]:
    out = []
    for raw in r.zrange(_INDEX, 0, -1):
        key_id = raw.decode() if isinstance(raw, bytes) else raw
        f = _text(r.hgetall(_record(key_id)))
        if f:
            out.append({"key_id": key_id, "name": f["name"], "scopes": f["scopes"].split(","),
                        "revoked": f["revoked"] == "1", "created_at": float(f["created_at"])})
    return out


def verify_key(r: redis.Redis, presented: str) -> ApiKey | None:
    """The key for a presented plaintext, or None if malformed, unknown or revoked."""
    m = _KEY.fullmatch(presented.strip())
    if not m:
        return None
    key_id, secret = m.groups()
    f = _text(r.hgetall(_record(key_id)))
    if not f or f.get("revoked") != "0" or not hmac.compare_digest(f["secret_sha256"], _digest(secret)):
        return None
    return ApiKey(key_id, f["name"], tuple(f["scopes"].split(",")))


def move_keys_out_of_neo4j(driver: Driver, r: redis.Redis, *, database: str | None = None) -> int:
    """Move keys stored as ``(:ApiKey)`` nodes (before keys lived in Redis) into Redis and delete the nodes.

    Idempotent and safe to interrupt: each key is written to Redis (unless there already) before its node is
    deleted, so a crash in between leaves the key in both places and the next run finishes the move.
    Returns how many nodes were removed from Neo4j."""
    records, _, _ = driver.execute_query(
        "MATCH (k:ApiKey) RETURN k.key_id AS key_id, k.name AS name, k.scopes AS scopes, k.secret_sha256 AS digest, "
        "k.created_at AS created_at, k.revoked AS revoked", database_=database)
    for k in records:
        _store(r, k["key_id"], k["name"], list(k["scopes"]), k["digest"], float(k["created_at"]), bool(k["revoked"]))
    if records:
        driver.execute_query("MATCH (k:ApiKey) WHERE k.key_id IN $ids DELETE k",
                             ids=[k["key_id"] for k in records], database_=database)
    return len(records)


def _presented(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-api-key")


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def key_responses(scope: str, more: dict[int, dict] | None = None, *,
                  also_forbidden: str | None = None) -> dict[int, dict]:
    """The OpenAPI ``responses`` of a route behind ``require_scope(scope)``: its 401 and 403, plus the route's own
    (``more``). ``also_forbidden`` names another reason the route answers 403 (``"the path is outside ..."``)."""
    forbidden = f"Key lacks '{scope}'" + (f", or {also_forbidden}" if also_forbidden else "")
    return {401: {"description": "No or invalid API key"}, 403: {"description": forbidden}, **(more or {})}


def require_scope(scope: str) -> Callable[[Request], ApiKey]:
    """A FastAPI dependency: the request's valid API key having ``scope`` (401 / 403 otherwise; 503 if Redis,
    where the keys live, does not answer)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def dependency(request: Request) -> ApiKey:
        from service.api.deps import redis_of

        presented = _presented(request)
        if not presented:
            raise _unauthorized("an API key is required: send 'Authorization: Bearer <key>' (create one with "
                                "`atlas keys create NAME`)")
        try:
            key = verify_key(redis_of(request), presented)
        except (redis.exceptions.RedisError, OSError):
            raise HTTPException(503, "API keys cannot be checked: Redis, where they are kept, does not answer; "
                                     "retry shortly", headers={"Retry-After": "5"}) from None
        if key is None:
            raise _unauthorized("the API key is invalid or revoked")
        if not key.has(scope):
            raise HTTPException(403, f"this API key lacks the '{scope}' scope (it has: {', '.join(key.scopes)})")
        return key

    dependency.__name__ = f"require_{scope}_scope"
    return dependency


def authorize_corpus(driver: Driver, key: ApiKey, corpus_id: str, *, database: str | None = None) -> None:
    """403 unless ``key`` created the corpus (``Corpus.owner_key_id``) or is an admin key; 404 if unknown."""
    records, _, _ = driver.execute_query("MATCH (c:Corpus {corpus_id: $c}) RETURN c.owner_key_id AS owner",
                                         c=corpus_id, database_=database, routing_="r")
    if not records:
        raise HTTPException(404, f"no corpus {corpus_id!r}")
    if "admin" in key.scopes:
        return
    if records[0]["owner"] != key.key_id:
        raise HTTPException(403, f"corpus {corpus_id!r} belongs to another API key; keys may only change the "
                                 "corpora they created")
