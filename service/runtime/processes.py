"""Processes the project starts itself: pid files, port checks, start detached, stop politely.

`down` must only ever stop what `up` started. A pid file alone is not proof (pids are reused after a
reboot or a crash), so every check also reads ``/proc/<pid>/cmdline`` and requires a marker that only
our own command line contains (for Neo4j its home directory, for Redis its data directory).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# How runtime functions report progress: a callable taking one line (the CLI passes typer.echo).
Echo = Callable[[str], None]


def quiet(_: str) -> None:
    """The default Echo: report nothing."""


class ServiceError(RuntimeError):
    """A service could not be started, reached or stopped. The message names the cause and the fix."""


@dataclass(frozen=True)
class OwnedProcess:
    """A process recorded in one of our pid files and verified to still be ours."""

    pid: int
    pid_file: Path


def read_pid_file(pid_file: Path) -> int | None:
    """The pid stored in ``pid_file``, or None when the file is missing or unreadable (corrupt)."""
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def process_cmdline(pid: int) -> str | None:
    """The command line of a live process (arguments joined by spaces), None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if not raw:  # zombie or kernel thread
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


def process_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def owned_process(pid_file: Path, marker: str, cwd: Path | None = None) -> OwnedProcess | None:
    """The process named by ``pid_file`` if it is alive, its command line contains ``marker`` and (when
    given) its working directory is ``cwd`` (for programs such as redis-server that rewrite their title).

    A stale or corrupt pid file (dead pid, pid reused by an unrelated program, garbage content) is
    removed, so the next `up` starts cleanly instead of refusing or, worse, signalling a stranger.
    """
    pid = read_pid_file(pid_file)
    if pid is None:
        if pid_file.exists():
            pid_file.unlink()
        return None
    cmdline = process_cmdline(pid)
    if cmdline is None or marker not in cmdline or (cwd is not None and process_cwd(pid) != cwd.resolve()):
        pid_file.unlink(missing_ok=True)
        return None
    return OwnedProcess(pid=pid, pid_file=pid_file)


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on (host, port) and we could bind it ourselves."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Without SO_REUSEADDR a port in TIME_WAIT from our own previous run would look taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_accepts(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when a TCP connection to (host, port) succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def start_detached(
    argv: Sequence[str], *, cwd: Path, log_file: Path, pid_file: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (it outlives the CLI and its terminal) and record its pid.

    stdout and stderr go to ``log_file`` so that a crash at start can be shown to the user.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - argv is built by us, never from user text
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc


def stop_process(pid: int, timeout_s: float, *, popen: subprocess.Popen[bytes] | None = None) -> bool:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Returns True if SIGKILL was needed.

    ``popen`` (when we are the parent) is reaped so no zombie is left behind.
    """

    def alive() -> bool:
        if popen is not None:
            return popen.poll() is None
        return process_cmdline(pid) is not None

    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            return False
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist), for error messages."""
    try:
        content = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(content[-lines:])
