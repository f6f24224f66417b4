"""`atlas demo`: the main job, as far as it exists, as a list of named steps.

Each step is a function of a shared :class:`DemoContext` that returns a one-line summary. Later work
(zoo, dictionaries, attribution, pipeline) adds its steps to ``DEMO_STEPS``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workers.settings import Settings


class DemoError(RuntimeError):
    """A demo step failed; the message says which and why."""


@dataclass
class DemoContext:
    settings: Settings
    echo: Callable[[str], None]
    results: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoStep:
    name: str
    run: Callable[[DemoContext], str]


def step_services(ctx: DemoContext) -> str:
    from service.runtime import services

    status = services.up(ctx.settings, ctx.echo)
    return "; ".join(status.lines())


def step_migrate(ctx: DemoContext) -> str:
    from service.db import neo4j_driver
    from service.db.migrations import migrate

    with neo4j_driver(ctx.settings) as driver:
        report = migrate(driver, ctx.settings.neo4j_database)
    return f"applied {report.applied or 'nothing new'}; already applied {report.already_applied}"


def start_worker_process(settings: Settings, queues: str = "cpu,gpu", name: str | None = None) -> subprocess.Popen[bytes]:
    """A real `atlas worker` in a subprocess (its own session, so the demo can stop it cleanly)."""
    name = name or f"demo-{uuid.uuid4().hex[:6]}"
    argv = [sys.executable, "-m", "service.cli", "worker", "--queues", queues, "--concurrency", "1", "--name", name]
    env = {**os.environ, "ATLAS_REDIS_URL": settings.redis_url}
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


def stop_worker_process(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """Warm shutdown, then SIGKILL of the whole process group if it does not exit in time.

    SIGTERM goes to the main process only: it lets the running task finish and stops its pool children
    itself (signalling the group would kill a child mid-task).
    """
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def step_ping_worker(ctx: DemoContext) -> str:
    from workers.tasks import ping

    proc = start_worker_process(ctx.settings)
    try:
        started = time.monotonic()
        result = ping.apply_async(args=["demo"], queue="cpu")
        try:
            reply = result.get(timeout=120)
        except Exception as exc:  # noqa: BLE001 - re-raised with the cause named
            raise DemoError(f"the ping task did not come back from the worker: {exc!r}") from exc
        ctx.results["ping"] = reply
        return f"atlas.ping round trip through worker pid {reply['pid']} in {time.monotonic() - started:.1f}s"
    finally:
        stop_worker_process(proc)


def step_health(ctx: DemoContext) -> str:
    from service.api.health import check_health
    from service.db import neo4j_driver

    with neo4j_driver(ctx.settings) as driver:
        health = check_health(driver, ctx.settings)
    ctx.results["health"] = health.model_dump()
    if health.failing:
        raise DemoError(f"unhealthy: {health.model_dump_json()}")
    return f"Neo4j {health.neo4j.version} {health.neo4j.edition}, Redis {health.redis.version}"


DEMO_STEPS: list[DemoStep] = [
    DemoStep("services", step_services),
    DemoStep("migrate", step_migrate),
    DemoStep("worker round trip", step_ping_worker),
    DemoStep("health", step_health),
]


def run_demo(settings: Settings, echo: Callable[[str], None], steps: list[DemoStep] | None = None) -> DemoContext:
    ctx = DemoContext(settings=settings, echo=echo)
    for number, step in enumerate(steps or DEMO_STEPS, start=1):
        started = time.monotonic()
        echo(f"[{number}] {step.name} ...")
        summary = step.run(ctx)
        echo(f"[{number}] {step.name}: {summary} ({time.monotonic() - started:.1f}s)")
    return ctx
