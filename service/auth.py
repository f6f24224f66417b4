"""API keys: hashed at rest in Neo4j, checked by a FastAPI dependency on every write endpoint and /cypher.

A key is ``ca_<key_id>_<secret>``; Neo4j stores ``(:ApiKey {key_id, name, scopes, secret_sha256, created_at,
revoked})``. The secret is 32 random bytes, so a plain SHA-256 is enough (no password stretching needed:
there is nothing to brute-force), and comparison is constant-time. The plaintext is shown once, at creation.

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
without the scope, or not the owner of the corpus.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request
from neo4j import Driver

SCOPES = ("cypher", "write", "admin")
_KEY = re.compile(r"ca_([0-9a-f]{16})_([A-Za-z0-9_\-]{20,100})")


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scopes: tuple[str, ...]

    def has(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(driver: Driver, name: str, scopes: tuple[str, ...] = ("cypher", "write"), *,
               database: str | None = None) -> tuple[ApiKey, str]:
    """Create a key; returns it and its plaintext (the only time the plaintext exists)."""
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; choose from {', '.join(SCOPES)}")
    if not scopes:
        raise ValueError("a key needs at least one scope")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    driver.execute_query(
        "CREATE (:ApiKey {key_id: $key_id, name: $name, scopes: $scopes, secret_sha256: $digest, "
        "created_at: $now, revoked: false})",
        key_id=key_id, name=name, scopes=list(scopes), digest=_digest(secret), now=time.time(), database_=database,
    )
    return ApiKey(key_id, name, tuple(scopes)), f"ca_{key_id}_{secret}"


def revoke_key(driver: Driver, key_id: str, *, database: str | None = None) -> bool:
    records, _, _ = driver.execute_query(
        "MATCH (k:ApiKey {key_id: $key_id}) SET k.revoked = true RETURN count(k) AS n", key_id=key_id,
        database_=database)
    return records[0]["n"] == 1


def list_keys(driver: Driver, *, database: str | None = None) -> list[dict]:
    records, _, _ = driver.execute_query(
        "MATCH (k:ApiKey) RETURN k.key_id AS key_id, k.name AS name, k.scopes AS scopes, k.revoked AS revoked, "
        "k.created_at AS created_at ORDER BY created_at", database_=database, routing_="r")
    return [dict(r) for r in records]


def verify_key(driver: Driver, presented: str, *, database: str | None = None) -> ApiKey | None:
    """The key for a presented plaintext, or None if malformed, unknown or revoked."""
    m = _KEY.fullmatch(presented.strip())
    if not m:
        return None
    key_id, secret = m.groups()
    records, _, _ = driver.execute_query(
        "MATCH (k:ApiKey {key_id: $key_id}) RETURN k.name AS name, k.scopes AS scopes, k.secret_sha256 AS digest, "
        "k.revoked AS revoked", key_id=key_id, database_=database, routing_="r")
    if not records:
        return None
    r = records[0]
    if r["revoked"] or not hmac.compare_digest(r["digest"], _digest(secret)):
        return None
    return ApiKey(key_id, r["name"], tuple(r["scopes"]))


def _presented(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-api-key")


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def require_scope(scope: str) -> Callable[[Request], ApiKey]:
    """A FastAPI dependency: the request's valid API key having ``scope`` (401 / 403 otherwise)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def dependency(request: Request) -> ApiKey:
        from service.api.deps import driver_of

        presented = _presented(request)
        if not presented:
            raise _unauthorized("an API key is required: send 'Authorization: Bearer <key>' (create one with "
                                "`atlas keys create NAME`)")
        key = verify_key(driver_of(request), presented, database=request.app.state.settings.neo4j_database)
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
