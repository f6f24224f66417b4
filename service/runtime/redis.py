"""Redis for the Celery broker and result backend: use one already answering, else start our own.

Our own is Debian's ``redis-server`` on loopback with ``appendonly yes`` (a queued task survives a
restart) and ``maxmemory-policy noeviction`` (Redis must refuse writes rather than silently drop queued
tasks). Data, log and pid file live in ``<state_dir>/redis``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import redis

from service.runtime.processes import (
    Echo,
    ServiceError,
    owned_process,
    port_is_free,
    quiet,
    start_detached,
    stop_process,
    tail,
)
from workers.connections.redis import redis_client
from workers.settings import Settings


@dataclass(frozen=True)
class RedisPaths:
    home: Path
    pid_file: Path
    log_file: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisPaths:
        home = settings.state_dir / "redis"
        return cls(home=home, pid_file=home / "atlas-redis.pid", log_file=home / "redis.log")

    # redis-server rewrites its process title ("redis-server 127.0.0.1:6379"), so our instance is
    # recognised by its name plus its working directory (it chdirs into --dir).
    process_marker = "redis-server"


@dataclass(frozen=True)
class RedisStatus:
    reachable: bool
    owned_pid: int | None  # the redis-server we started, if any
    url: str
    version: str | None = None
    started_now: bool = False


def host_port(settings: Settings) -> tuple[str, int]:
    parsed = urlparse(settings.redis_url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise ServiceError(
            f"ATLAS_REDIS_URL={settings.redis_url!r} is not of the form redis://HOST:PORT/DB; fix it."
        )
    return parsed.hostname, parsed.port or 6379


def ping(settings: Settings, timeout_s: float = 1.0) -> str | None:
    """The server version if something at ``redis_url`` answers PING, else None."""
    client = redis_client(settings, timeout_s=timeout_s)
    try:
        client.ping()
        return str(client.info("server").get("redis_version"))
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return None
    finally:
        client.close()


def status(settings: Settings) -> RedisStatus:
    paths = RedisPaths.from_settings(settings)
    owned = owned_process(paths.pid_file, paths.process_marker, cwd=paths.home) if paths.pid_file.exists() else None
    version = ping(settings)
    return RedisStatus(
        reachable=version is not None, owned_pid=owned.pid if owned else None, url=settings.redis_url,
        version=version,
    )


def find_redis_server(echo: Echo) -> str:
    """Path of redis-server, installing Debian's package with apt when missing and we are root."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServiceError(
            "redis-server is not installed. Install it (`sudo apt-get install -y redis-server`), or start any "
            "Redis 6+ yourself and set ATLAS_REDIS_URL to it."
        )
    echo("redis-server missing; installing Debian's package with apt-get ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"],
        capture_output=True, text=True, env=env, check=False,
    )
    if result.returncode != 0:
        update = subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, check=False)
        result = subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"],
            capture_output=True, text=True, env=env, check=False,
        )
        if result.returncode != 0:
            raise ServiceError(
                "installing redis-server with apt-get failed; install it by hand or set ATLAS_REDIS_URL to a "
                f"running Redis. apt said:\n{(update.stderr + result.stdout + result.stderr)[-2000:]}"
            )
    found = shutil.which("redis-server")
    if not found:
        raise ServiceError("apt-get installed redis-server but it is not on PATH; check /usr/bin/redis-server.")
    return found


def start(settings: Settings, echo: Echo = quiet) -> RedisStatus:
    """Use a Redis already answering at ``redis_url``; else start ours on its loopback port."""
    current = status(settings)
    if current.reachable:
        return current
    paths = RedisPaths.from_settings(settings)
    if current.owned_pid is not None:
        # Our process is alive but does not answer: it is still loading its AOF, or wedged.
        raise ServiceError(
            f"our redis-server (pid {current.owned_pid}) is running but does not answer PING at "
            f"{settings.redis_url}. See {paths.log_file}; `atlas services down` then `up` restarts it."
        )
    host, port = host_port(settings)
    if host not in ("127.0.0.1", "localhost"):
        raise ServiceError(
            f"no Redis answers at {settings.redis_url} and it is not on this machine, so it cannot be started "
            "here. Start it, or point ATLAS_REDIS_URL at redis://127.0.0.1:<port>/0."
        )
    if not port_is_free("127.0.0.1", port):
        raise ServiceError(
            f"port {port} is in use by a process that does not answer the Redis PING. Stop it, or choose a "
            "free port with ATLAS_REDIS_URL=redis://127.0.0.1:<port>/0."
        )
    server = find_redis_server(echo)
    paths.home.mkdir(parents=True, exist_ok=True)
    argv = [
        server,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(paths.home),
        "--appendonly", "yes",
        "--maxmemory-policy", "noeviction",
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--logfile", str(paths.log_file),
    ]
    echo(f"starting redis-server on 127.0.0.1:{port} (data in {paths.home}) ...")
    proc = start_detached(argv, cwd=paths.home, log_file=paths.home / "console.log", pid_file=paths.pid_file)
    deadline = time.monotonic() + settings.redis_start_timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise ServiceError(
                    f"redis-server exited with code {proc.returncode} at start. If its log mentions a bad "
                    f"appendonly file, {paths.home} is damaged: move it aside and retry "
                    f"(`mv {paths.home} {paths.home}.broken`).\n--- {paths.log_file} ---\n{tail(paths.log_file)}"
                    f"\n{tail(paths.home / 'console.log')}"
                )
            version = ping(settings, timeout_s=0.5)
            if version is not None:
                break
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"redis-server did not answer within {settings.redis_start_timeout_s}s; stopped it. "
                    f"--- {paths.log_file} ---\n{tail(paths.log_file)}"
                )
            time.sleep(0.1)
    except BaseException:
        stop_process(proc.pid, 10, popen=proc)
        paths.pid_file.unlink(missing_ok=True)
        raise
    echo(f"Redis {version} is up (pid {proc.pid})")
    return RedisStatus(reachable=True, owned_pid=proc.pid, url=settings.redis_url, version=version, started_now=True)


def stop(settings: Settings, echo: Echo = quiet) -> bool:
    """Stop the redis-server we started (pid file); a Redis someone else runs is left alone."""
    paths = RedisPaths.from_settings(settings)
    owned = owned_process(paths.pid_file, paths.process_marker, cwd=paths.home)
    if owned is None:
        return False
    echo(f"stopping redis-server (pid {owned.pid}) ...")
    stop_process(owned.pid, 30)
    paths.pid_file.unlink(missing_ok=True)
    return True
