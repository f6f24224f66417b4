"""`atlas services up|down|status`: both backing services together.

``up`` is idempotent (a running service is left as it is) and all-or-nothing: if Neo4j fails after we
started Redis in the same call, that Redis is stopped again so nothing half-started is left behind.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.runtime import neo4j as neo4j_runtime
from service.runtime import redis as redis_runtime
from service.runtime.processes import Echo, quiet
from workers.settings import Settings


@dataclass(frozen=True)
class ServicesStatus:
    neo4j: neo4j_runtime.Neo4jStatus
    redis: redis_runtime.RedisStatus

    def lines(self) -> list[str]:
        n, r = self.neo4j, self.redis
        neo4j_line = (
            f"neo4j: running (pid {n.pid}) at {n.uri}, state {n.home}" if n.running else f"neo4j: not running ({n.uri})"
        )
        if r.reachable:
            owner = f"ours, pid {r.owned_pid}" if r.owned_pid else "not started by us"
            redis_line = f"redis: {r.version} answering at {r.url} ({owner})"
        else:
            redis_line = f"redis: not reachable at {r.url}"
        return [neo4j_line, redis_line]


def up(settings: Settings, echo: Echo = quiet) -> ServicesStatus:
    redis_status = redis_runtime.start(settings, echo)
    try:
        neo4j_status = neo4j_runtime.start(settings, echo)
    except BaseException:
        if redis_status.started_now:
            redis_runtime.stop(settings, echo)
        raise
    return ServicesStatus(neo4j=neo4j_status, redis=redis_status)


def down(settings: Settings, echo: Echo = quiet) -> list[str]:
    """Stop what the project started (pid files). Returns the names of the services stopped."""
    stopped = []
    if neo4j_runtime.stop(settings, echo):
        stopped.append("neo4j")
    if redis_runtime.stop(settings, echo):
        stopped.append("redis")
    return stopped


def status(settings: Settings) -> ServicesStatus:
    return ServicesStatus(neo4j=neo4j_runtime.status(settings), redis=redis_runtime.status(settings))
