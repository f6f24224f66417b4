"""A real Neo4j 5.26 Community server, assembled from Maven Central and run from the state directory.

There is no server tarball on Maven Central, but the ``neo4j-community-standalone`` pom lists exactly the
distribution's ``lib/``; ``mvn dependency:copy-dependencies`` of it gives a runnable classpath (fetched once
into ``<cache_dir>/neo4j/<version>/lib``). We write ``neo4j.conf`` and log4j2 configs into
``<state_dir>/neo4j/conf`` and launch ``org.neo4j.server.CommunityEntryPoint`` directly. Launching the
class directly means neo4j.conf heap settings are ignored, so heap goes on the java command line.

Layout of ``<state_dir>/neo4j``: conf/, data/, logs/ (console.log = the JVM's stdout/stderr), run/
(atlas-neo4j.pid), password (0600, the generated password).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from service.runtime.processes import (
    Echo,
    ServiceError,
    owned_process,
    port_accepts,
    port_is_free,
    quiet,
    start_detached,
    stop_process,
    tail,
)
from workers.connections.neo4j import generated_password_file, neo4j_driver
from workers.settings import Settings

MAIN_CLASS = "org.neo4j.server.CommunityEntryPoint"
ADMIN_CLASS = "org.neo4j.cli.AdminTool"
SUPPORTED_JAVA = (17, 21)  # Neo4j 5.26 runs on Java 17 and 21.

# The JVM flags the distribution's launcher passes (bin/neo4j); without the --add-opens the page cache
# and Netty fail at start on Java 17.
JVM_FLAGS = (
    "-XX:+UseG1GC",
    "-XX:-OmitStackTraceInFastThrow",
    "-XX:+UnlockExperimentalVMOptions",
    "-XX:+TrustFinalNonStaticFields",
    "-XX:+DisableExplicitGC",
    "-Djdk.nio.maxCachedBufferSize=1024",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Djdk.tls.ephemeralDHKeySize=2048",
    "-Djdk.tls.rejectClientInitiatedRenegotiation=true",
    "-Dlog4j2.disable.jmx=true",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--enable-native-access=ALL-UNNAMED",
    "--add-modules=jdk.incubator.vector",
)



@dataclass(frozen=True)
class Neo4jPaths:
    """Where the jars (cache, shared by checkouts) and the server state (per state_dir) live."""

    version_dir: Path
    lib: Path
    fetched_stamp: Path
    home: Path
    conf: Path
    data: Path
    logs: Path
    run: Path
    pid_file: Path
    console_log: Path
    password_file: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> Neo4jPaths:
        version_dir = settings.cache_dir / "neo4j" / settings.neo4j_version
        home = settings.state_dir / "neo4j"
        return cls(
            version_dir=version_dir,
            lib=version_dir / "lib",
            fetched_stamp=version_dir / "lib.complete",
            home=home,
            conf=home / "conf",
            data=home / "data",
            logs=home / "logs",
            run=home / "run",
            pid_file=home / "run" / "atlas-neo4j.pid",
            console_log=home / "logs" / "console.log",
            password_file=generated_password_file(settings),
        )

    @property
    def process_marker(self) -> str:
        """Only our server's command line contains this; used to recognise it behind a pid file."""
        return f"--home-dir={self.home}"


def bolt_host_port(settings: Settings) -> tuple[str, int]:
    """(host, port) of the Bolt URI; the local server only ever binds a loopback address."""
    match = re.match(r"^(?:bolt|neo4j)(?:\+s|\+ssc)?://([^:/]+):(\d+)", settings.neo4j_uri)
    if not match:
        raise ServiceError(
            f"ATLAS_NEO4J_URI={settings.neo4j_uri!r} is not of the form bolt://HOST:PORT; "
            "fix it (e.g. bolt://127.0.0.1:7687)."
        )
    return match.group(1), int(match.group(2))


def is_local(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


# --- fetching the jars ------------------------------------------------------------------------------


def fetch_jars(settings: Settings, echo: Echo = quiet) -> Path:
    """Resolve the server's jars from Maven Central once; later calls return the cached ``lib/``.

    The copy goes into a scratch directory renamed into place only after Maven succeeded, so an
    interrupted fetch never leaves a half-filled ``lib/`` that would look usable.
    """
    paths = Neo4jPaths.from_settings(settings)
    if paths.fetched_stamp.exists() and any(paths.lib.glob("neo4j-server-*.jar")):
        return paths.lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError(
            "Maven (mvn) is not installed; it is needed once to fetch the Neo4j server jars. "
            "Install it with `apt-get install -y maven` (scripts/dev checks this)."
        )
    paths.version_dir.mkdir(parents=True, exist_ok=True)
    pom = paths.version_dir / "pom.xml"
    pom.write_bytes(resources.files("service.runtime").joinpath("neo4j-pom.xml").read_bytes())
    scratch = paths.version_dir / f"lib.partial-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    echo(f"fetching Neo4j {settings.neo4j_version} jars from Maven Central into {paths.lib} (once) ...")
    started = time.monotonic()
    argv = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(pom),
        f"-Dneo4j.version={settings.neo4j_version}",
        "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies",
        f"-DoutputDirectory={scratch}",
        "-DexcludeTypes=pom",
    ]
    result = subprocess.run(argv, cwd=paths.version_dir, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not any(scratch.glob("neo4j-server-*.jar")):
        shutil.rmtree(scratch, ignore_errors=True)
        output = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        raise ServiceError(
            f"Maven could not fetch Neo4j {settings.neo4j_version} (exit {result.returncode}). "
            "Is Maven Central reachable (network, proxy in ~/.m2/settings.xml) and is the version a real "
            f"5.26.x release (ATLAS_NEO4J_VERSION)? Maven said:\n{output}"
        )
    shutil.rmtree(paths.lib, ignore_errors=True)
    scratch.rename(paths.lib)
    paths.fetched_stamp.write_text(f"{settings.neo4j_version}\n")
    echo(f"fetched {len(list(paths.lib.glob('*.jar')))} jars in {time.monotonic() - started:.1f}s")
    return paths.lib


# --- java ---------------------------------------------------------------------------------------------


def java_major_version(java: Path) -> int | None:
    """The major version `java -version` reports (17 for 17.0.15), None if it does not run."""
    try:
        result = subprocess.run([str(java), "-version"], capture_output=True, text=True, check=False, timeout=30)
    except OSError:
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def find_java(settings: Settings) -> Path:
    """The java binary to run Neo4j with: ``<java_home>/bin/java``, else a supported `java` on PATH."""
    candidates = [settings.java_home / "bin" / "java"]
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path))
    seen: list[str] = []
    for java in candidates:
        if not java.exists():
            continue
        major = java_major_version(java)
        seen.append(f"{java} (version {major})")
        if major in SUPPORTED_JAVA:
            return java
    found = "; found " + ", ".join(seen) if seen else ""
    raise ServiceError(
        f"Java 17 is needed to run Neo4j {settings.neo4j_version} and was not found at "
        f"{settings.java_home}/bin/java or on PATH{found}. Install it with "
        "`apt-get install -y openjdk-17-jre-headless`, or point ATLAS_JAVA_HOME at a Java 17 or 21 home."
    )


# --- configuration ------------------------------------------------------------------------------------

_SIZE = re.compile(r"(?i)^\s*(\d+)\s*([kmgt]?)i?b?\s*$")


def byte_size(text: str) -> int:
    """Bytes of a JVM / Neo4j size: ``"768m"``, ``"1g"``, ``"512k"``, ``"1048576"`` (suffixes are powers of 1024)."""
    m = _SIZE.match(text)
    if m is None:
        raise ServiceError(f"{text!r} is not a size; write it as bytes or with k, m, g (e.g. 768m, 1g)")
    return int(m.group(1)) * 1024 ** "_kmgt".index((m.group(2) or "_").lower())


def transaction_memory(settings: Settings) -> tuple[int, int]:
    """(per transaction, all transactions) bytes of Neo4j's transaction memory pools (ATLAS_NEO4J_TX_MEMORY_*).

    Defaults from the heap: a quarter per transaction, so that the 4 user queries POST /cypher runs at once
    (``cypher_max_concurrent``) cannot take the whole heap, and 70% for all together (Neo4j's own default for
    its server-wide pool). A transaction over either limit is stopped by the server, never the JVM."""
    heap = byte_size(settings.neo4j_heap)
    per_tx = byte_size(settings.neo4j_tx_memory_max) if settings.neo4j_tx_memory_max else heap // 4
    total = byte_size(settings.neo4j_tx_memory_total_max) if settings.neo4j_tx_memory_total_max else heap * 7 // 10
    if not 0 < per_tx <= total:
        raise ServiceError(f"ATLAS_NEO4J_TX_MEMORY_MAX ({per_tx:,} bytes) must be positive and at most "
                           f"ATLAS_NEO4J_TX_MEMORY_TOTAL_MAX ({total:,} bytes)")
    return per_tx, total


def render_conf(settings: Settings, paths: Neo4jPaths) -> str:
    """neo4j.conf for a loopback, single-user server whose files all live under the state directory.

    Unknown keys make Neo4j refuse to start, so only keys valid in 5.26 appear here.
    """
    host, port = bolt_host_port(settings)
    per_tx, total = transaction_memory(settings)
    lines = [
        "# Written by `atlas services up` from the ATLAS_* settings; edits are overwritten.",
        f"server.directories.data={paths.data}",
        f"server.directories.logs={paths.logs}",
        f"server.directories.run={paths.run}",
        f"server.directories.import={paths.home / 'import'}",
        f"server.directories.plugins={paths.home / 'plugins'}",
        "server.default_listen_address=127.0.0.1",
        "server.bolt.enabled=true",
        f"server.bolt.listen_address=127.0.0.1:{port}",
        f"server.http.enabled={'true' if settings.neo4j_http_port else 'false'}",
        "server.https.enabled=false",
        f"server.memory.pagecache.size={settings.neo4j_pagecache}",
        f"db.transaction.timeout={settings.neo4j_tx_timeout_s}s",
        f"db.memory.transaction.max={per_tx}",
        f"db.memory.transaction.total.max={total}",
        f"db.relationship_grouping_threshold={settings.neo4j_dense_node_threshold}",
        # A stop should not wait long for client transactions; the driver retries on reconnect.
        "db.shutdown_transaction_end_timeout=2s",
        "dbms.security.auth_enabled=true",
        "dbms.security.allow_csv_import_from_file_urls=false",
        "dbms.usage_report.enabled=false",
        f"server.logs.config={paths.conf / 'server-logs.xml'}",
        f"server.logs.user.config={paths.conf / 'user-logs.xml'}",
    ]
    if settings.neo4j_http_port:
        lines.append(f"server.http.listen_address=127.0.0.1:{settings.neo4j_http_port}")
    del host  # the server always binds loopback; the URI host only matters to clients
    return "\n".join(lines) + "\n"


def write_conf(settings: Settings, paths: Neo4jPaths) -> None:
    try:
        for directory in (paths.conf, paths.data, paths.logs, paths.run, paths.home / "import",
                          paths.home / "plugins"):
            directory.mkdir(parents=True, exist_ok=True)
        (paths.conf / "neo4j.conf").write_text(render_conf(settings, paths))
        package = resources.files("service.runtime")
        for name in ("server-logs.xml", "user-logs.xml"):
            (paths.conf / name).write_bytes(package.joinpath(name).read_bytes())
    except OSError as exc:
        raise ServiceError(
            f"the Neo4j state directory {paths.home} is damaged or not writable ({exc}). Move it aside "
            f"(`mv {paths.home} {paths.home}.broken`) or point ATLAS_STATE_DIR elsewhere, then retry."
        ) from exc


# --- password -----------------------------------------------------------------------------------------


def database_initialised(paths: Neo4jPaths) -> bool:
    """True once the server has created its system database (the initial password is then fixed)."""
    return (paths.data / "databases" / "system").exists()


def ensure_initial_password(settings: Settings, paths: Neo4jPaths, java: Path) -> str:
    """The password the server will accept, set with `neo4j-admin dbms set-initial-password` if new.

    Neo4j only honours an initial password before its first start; afterwards the stored one must match.
    """
    stored = paths.password_file.read_text().strip() if paths.password_file.exists() else ""
    if database_initialised(paths):
        if settings.neo4j_password and stored and settings.neo4j_password != stored:
            raise ServiceError(
                f"ATLAS_NEO4J_PASSWORD differs from the password the Neo4j data in {paths.data} was created "
                f"with (stored in {paths.password_file}). Unset ATLAS_NEO4J_PASSWORD, or start from empty "
                f"state: `atlas services down && rm -rf {paths.home}`."
            )
        password = settings.neo4j_password or stored
        if not password:
            raise ServiceError(
                f"the Neo4j data in {paths.data} exists but its password is unknown ({paths.password_file} "
                "is missing and ATLAS_NEO4J_PASSWORD is empty). Set ATLAS_NEO4J_PASSWORD to it, or start from "
                f"empty state: `atlas services down && rm -rf {paths.home}`."
            )
        return password
    password = settings.neo4j_password or stored or secrets.token_urlsafe(24)
    if len(password) < 8:
        raise ServiceError("ATLAS_NEO4J_PASSWORD must have at least 8 characters (a Neo4j rule).")
    result = subprocess.run(
        [str(java), "-cp", f"{paths.lib}/*", ADMIN_CLASS, "dbms", "set-initial-password", password],
        cwd=paths.home,
        env={**os.environ, "NEO4J_HOME": str(paths.home), "NEO4J_CONF": str(paths.conf)},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ServiceError(
            f"setting the initial Neo4j password failed (exit {result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-2000:]}"
        )
    paths.password_file.parent.mkdir(parents=True, exist_ok=True)
    # Written 0600 from the start, not chmod-ed after, so it is never readable by others.
    fd = os.open(paths.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password


# --- lifecycle ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Neo4jStatus:
    running: bool
    pid: int | None
    uri: str
    home: Path
    started_now: bool = False
    startup_s: float | None = None


def status(settings: Settings) -> Neo4jStatus:
    paths = Neo4jPaths.from_settings(settings)
    owned = owned_process(paths.pid_file, paths.process_marker) if paths.pid_file.exists() else None
    return Neo4jStatus(running=owned is not None, pid=owned.pid if owned else None, uri=settings.neo4j_uri,
                       home=paths.home)


# --- class-data sharing ------------------------------------------------------------------------------
# Loading ~200 jars' classes dominates start-up on a small machine. A dynamic AppCDS archive, written by
# the JVM at exit after one normal run, roughly halves later starts (measured 26 s -> 14 s on 2 busy
# cores). The archive is tied to the exact JVM and classpath, so its name carries a fingerprint of both;
# if it does not match anyway, the JVM (-Xshare:auto, the default) ignores it and starts normally.
# It is written to a temporary name and renamed by `stop` only after a clean exit, so a reader never
# sees a half-written archive.


def cds_archive(paths: Neo4jPaths, java: Path) -> Path:
    version = subprocess.run([str(java), "-version"], capture_output=True, text=True, check=False).stderr
    fingerprint = hashlib.sha256(f"{java.resolve()}\n{version}\n{paths.lib}".encode()).hexdigest()[:16]
    return paths.version_dir / f"appcds-{fingerprint}.jsa"


def _cds_pending_file(paths: Neo4jPaths) -> Path:
    return paths.run / "appcds.pending"


def cds_flags(paths: Neo4jPaths, java: Path) -> list[str]:
    archive = cds_archive(paths, java)
    if archive.exists():
        return [f"-XX:SharedArchiveFile={archive}"]
    scratch = archive.with_name(f"{archive.stem}.{uuid.uuid4().hex[:8]}.tmp")
    _cds_pending_file(paths).write_text(f"{scratch}\n{archive}\n")
    return [f"-XX:ArchiveClassesAtExit={scratch}"]


def _publish_cds_archive(paths: Neo4jPaths, clean_exit: bool) -> None:
    pending = _cds_pending_file(paths)
    if not pending.exists():
        return
    scratch_text, _, archive_text = pending.read_text().strip().partition("\n")
    scratch, archive = Path(scratch_text), Path(archive_text)
    if clean_exit and scratch.exists() and scratch.stat().st_size > 0:
        scratch.replace(archive)
    else:
        scratch.unlink(missing_ok=True)
    pending.unlink(missing_ok=True)


def java_argv(settings: Settings, paths: Neo4jPaths, java: Path) -> list[str]:
    return [
        str(java),
        f"-Xms{settings.neo4j_heap}",
        f"-Xmx{settings.neo4j_heap}",
        *cds_flags(paths, java),
        *JVM_FLAGS,
        "-cp",
        f"{paths.lib}/*",
        MAIN_CLASS,
        f"--home-dir={paths.home}",
        f"--config-dir={paths.conf}",
        "--console-mode",
    ]


def _bolt_answers(settings: Settings, password: str) -> str | None:
    """None when Bolt accepts our credentials and the user database answers; else why not (yet).

    Raises ServiceError for conditions that waiting cannot fix: a rejected password, or a user database
    the server failed to start (damaged store files).
    """
    import neo4j

    paths = Neo4jPaths.from_settings(settings)
    try:
        with neo4j_driver(settings, password=password, connection_timeout_s=2) as driver:
            try:
                # session.run, not execute_query: no 30 s retry loop inside our own deadline loop. The user
                # database, not just Bolt: it comes online a moment after the port opens.
                with driver.session(database=settings.neo4j_database) as session:
                    session.run("CALL dbms.components()").consume()
                return None
            except (neo4j.exceptions.TransientError, neo4j.exceptions.ClientError,
                    neo4j.exceptions.DatabaseUnavailable) as exc:
                reason = str(exc)
            with driver.session(database="system") as session:
                record = session.run(
                    "SHOW DATABASE $name YIELD currentStatus, statusMessage", name=settings.neo4j_database
                ).single()
            if record and record["currentStatus"] in ("offline", "quarantined") and record["statusMessage"]:
                raise ServiceError(
                    f"Neo4j started but could not open database '{settings.neo4j_database}': "
                    f"{record['statusMessage']}. The state directory {paths.home} is probably damaged: "
                    f"`atlas services down && mv {paths.home} {paths.home}.broken`, then `atlas services up`.\n"
                    f"--- {paths.logs / 'debug.log'} ---\n{tail(paths.logs / 'debug.log', 15)}"
                )
            return reason
    except neo4j.exceptions.AuthError as exc:
        raise ServiceError(
            f"Neo4j started but rejected the password ({exc.message}). The data in the state directory was "
            "created with another password: set ATLAS_NEO4J_PASSWORD to it, or start from empty state "
            f"(`atlas services down && rm -rf {paths.home}`)."
        ) from None
    except (neo4j.exceptions.ServiceUnavailable, neo4j.exceptions.SessionExpired,
            neo4j.exceptions.TransientError, neo4j.exceptions.DatabaseUnavailable, OSError) as exc:
        return str(exc)


def start(settings: Settings, echo: Echo = quiet) -> Neo4jStatus:
    """Start the local server unless ours is already running (then a no-op). Blocks until Bolt answers.

    On any failure the half-started JVM is stopped and the pid file removed before raising.
    """
    paths = Neo4jPaths.from_settings(settings)
    current = status(settings)
    if current.running:
        return current
    host, port = bolt_host_port(settings)
    if not is_local(host):
        raise ServiceError(
            f"ATLAS_NEO4J_URI points at {host}, not this machine; `atlas services up` only starts a local "
            "server. Start that server yourself, or use bolt://127.0.0.1:<port>."
        )
    for what, taken in (("Bolt", port), ("HTTP", settings.neo4j_http_port)):
        if taken and not port_is_free("127.0.0.1", taken):
            raise ServiceError(
                f"port {taken} ({what}) is already in use by another process, so Neo4j cannot listen there. "
                f"Stop that process, or choose a free port (ATLAS_NEO4J_URI=bolt://127.0.0.1:<port>"
                f"{' / ATLAS_NEO4J_HTTP_PORT' if what == 'HTTP' else ''})."
            )
    java = find_java(settings)
    fetch_jars(settings, echo)
    write_conf(settings, paths)
    password = ensure_initial_password(settings, paths, java)

    echo(f"starting Neo4j {settings.neo4j_version} on {settings.neo4j_uri} (state in {paths.home}) ...")
    started = time.monotonic()
    proc = start_detached(
        java_argv(settings, paths, java), cwd=paths.home, log_file=paths.console_log, pid_file=paths.pid_file
    )
    deadline = started + settings.neo4j_start_timeout_s
    reason = "Bolt port not open yet"
    try:
        while True:
            if proc.poll() is not None:
                raise ServiceError(
                    f"Neo4j exited with code {proc.returncode} during start-up. If the log below mentions "
                    f"corrupt or unreadable files, the state directory {paths.home} is damaged: move it aside "
                    f"(`mv {paths.home} {paths.home}.broken`) and run `atlas services up` again.\n"
                    f"--- {paths.console_log} ---\n{tail(paths.console_log)}\n"
                    f"--- {paths.logs / 'neo4j.log'} ---\n{tail(paths.logs / 'neo4j.log')}"
                )
            if port_accepts("127.0.0.1", port):
                failure = _bolt_answers(settings, password)
                if failure is None:
                    break
                reason = failure
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"Neo4j did not answer on {settings.neo4j_uri} within {settings.neo4j_start_timeout_s}s "
                    f"(last: {reason}); stopped it. Raise ATLAS_NEO4J_START_TIMEOUT_S on a slow machine.\n"
                    f"--- {paths.logs / 'neo4j.log'} ---\n{tail(paths.logs / 'neo4j.log')}"
                )
            time.sleep(0.25)
    except BaseException:
        stop_process(proc.pid, settings.neo4j_stop_timeout_s, popen=proc)
        _publish_cds_archive(paths, clean_exit=False)
        paths.pid_file.unlink(missing_ok=True)
        raise
    elapsed = time.monotonic() - started
    echo(f"Neo4j is up (pid {proc.pid}) after {elapsed:.1f}s")
    return Neo4jStatus(running=True, pid=proc.pid, uri=settings.neo4j_uri, home=paths.home, started_now=True,
                       startup_s=elapsed)


def stop(settings: Settings, echo: Echo = quiet) -> bool:
    """Stop our server if its pid file names a live process of ours. Returns True if one was stopped."""
    paths = Neo4jPaths.from_settings(settings)
    owned = owned_process(paths.pid_file, paths.process_marker)
    if owned is None:
        return False
    echo(f"stopping Neo4j (pid {owned.pid}) ...")
    timeout_s = settings.neo4j_stop_timeout_s
    if _cds_pending_file(paths).exists():
        timeout_s = max(timeout_s, 180)  # writing the class archive at exit takes extra time, once
    killed = stop_process(owned.pid, timeout_s)
    if killed:
        echo(f"Neo4j did not stop within {timeout_s}s of SIGTERM; sent SIGKILL")
    _publish_cds_archive(paths, clean_exit=not killed)
    paths.pid_file.unlink(missing_ok=True)
    return True
