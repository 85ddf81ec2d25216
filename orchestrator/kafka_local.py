"""A real, single-node Apache Kafka broker for tests, fault drills and ``payorch up``.

Why a real broker instead of a mock: the orchestrator's guarantees (transactions,
consumer-group rebalances, idempotent producers, surviving a broker bounce) are
exactly the behaviour mocks get wrong.  Why not Docker: dev and CI machines here
have Java and Maven Central but no Docker, so the broker runs from Maven jars as
a plain JVM child process (KRaft, combined broker+controller, 127.0.0.1 only).

This module is the single entry point; ``deploy/local/kafka.sh`` only wraps it.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
# bandit B404: runs Maven and the broker's JVM with argument lists of our own.
import subprocess  # nosec B404
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

logger = logging.getLogger("payorch.kafka_local")
# librdkafka's own chatter (connection refused while the JVM boots) goes here, so
# it can be silenced or inspected apart from the launcher's messages.
_librdkafka_logger = logging.getLogger("payorch.kafka_local.librdkafka")

REPO_ROOT = Path(__file__).resolve().parent.parent
POM_RELPATH = Path("deploy/local/pom.xml")
CACHE_RELPATH = Path(".cache/kafka")
# The stamp holds the sha256 of the pom the libs were fetched with; kafka.sh
# writes the same file in the same format, so either tool can skip the fetch.
STAMP_NAME = "libs.sha256"
LOCK_NAME = "fetch.lock"
STATE_RELPATH = CACHE_RELPATH / "run" / "local-kafka.json"

maven_fetch_timeout_s = 900.0
startup_timeout_s = 90.0
shutdown_timeout_s = 30.0
readiness_probe_interval_s = 0.25
readiness_request_timeout_s = 5.0
broker_log_tail_lines = 40
broker_log_error_lines = 12

LOOPBACK_HOST = "127.0.0.1"
# Node id is fixed: the broker is alone, and a stable id lets restart() reuse
# the formatted storage.
NODE_ID = 1

_PR_SET_PDEATHSIG = 1


class LocalKafkaError(RuntimeError):
    """The local broker could not be fetched, started or stopped."""


# --------------------------------------------------------------------------- jars


def _pom_sha256(pom_path: Path) -> str:
    return hashlib.sha256(pom_path.read_bytes()).hexdigest()


def _libs_are_fresh(libs_dir: Path, stamp_path: Path, pom_hash: str) -> bool:
    try:
        stamp = stamp_path.read_text().strip()
    except FileNotFoundError:
        return False
    return stamp == pom_hash and libs_dir.is_dir() and any(libs_dir.glob("kafka_2.13-*.jar"))


def ensure_kafka_jars(repo_root: Path = REPO_ROOT) -> Path:
    """Return ``<repo>/.cache/kafka/libs``, fetching it with Maven when missing or stale.

    Staleness is keyed on the pom's sha256 rather than timestamps so a checkout or
    branch switch that doesn't change the pom never re-runs Maven.  A file lock
    serialises concurrent callers (parallel test workers, kafka.sh).
    """
    repo_root = Path(repo_root).resolve()
    pom_path = repo_root / POM_RELPATH
    if not pom_path.is_file():
        raise LocalKafkaError(f"Kafka pom not found at {pom_path}")
    cache_dir = repo_root / CACHE_RELPATH
    libs_dir = cache_dir / "libs"
    stamp_path = cache_dir / STAMP_NAME
    pom_hash = _pom_sha256(pom_path)

    if _libs_are_fresh(libs_dir, stamp_path, pom_hash):
        return libs_dir

    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / LOCK_NAME, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        # Another process may have finished the fetch while we waited for the lock.
        if _libs_are_fresh(libs_dir, stamp_path, pom_hash):
            return libs_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LocalKafkaError(
                "Apache Maven ('mvn') is not on PATH; it is needed once to fetch the Kafka "
                f"jars into {libs_dir} (install Maven, or run deploy/local/kafka.sh fetch "
                "on a machine that has it and copy .cache/kafka over)"
            )
        # Copy into a scratch dir and swap it in, so a failed or interrupted fetch
        # never leaves a half-populated libs dir that looks usable.
        staging_dir = cache_dir / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(staging_dir, ignore_errors=True)
        cmd = [
            mvn,
            "-B",
            "-q",
            "-Dstyle.color=never",
            "-f",
            str(pom_path),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging_dir}",
        ]
        logger.info("fetching Kafka jars with Maven into %s", libs_dir)
        fetch_started = time.monotonic()
        try:
            # bandit B603: our own mvn command line, no shell.
            result = subprocess.run(  # nosec B603
                cmd,
                cwd=repo_root,
                capture_output=True,
                text=True,
                timeout=maven_fetch_timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(staging_dir, ignore_errors=True)
            raise LocalKafkaError(
                f"Maven did not finish fetching Kafka jars within {maven_fetch_timeout_s:.0f}s"
            ) from exc
        if result.returncode != 0 or not any(staging_dir.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging_dir, ignore_errors=True)
            output_tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
            raise LocalKafkaError(
                f"Maven failed to fetch Kafka jars (exit {result.returncode}): "
                f"{' '.join(cmd)}\n{output_tail}"
            )
        shutil.rmtree(libs_dir, ignore_errors=True)
        staging_dir.rename(libs_dir)
        stamp_path.write_text(pom_hash + "\n")
        logger.info(
            "fetched %d Kafka jars in %.1fs",
            len(list(libs_dir.glob("*.jar"))),
            time.monotonic() - fetch_started,
        )
    return libs_dir


# ---------------------------------------------------------------- process helpers


def _find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError(
            "Java ('java') is not on PATH and JAVA_HOME is unset; Kafka 4 needs Java 17+"
        )
    return java


def _free_loopback_ports(count: int) -> list[int]:
    # Hold every socket open until all are chosen so the OS cannot hand out the
    # same port twice; the short window before the JVM binds is an accepted race.
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK_HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Match the JVM, which binds with SO_REUSEADDR: TIME_WAIT leftovers from
        # clients of a previous run must not count as "taken".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK_HOST, port))
        except OSError:
            return False
        return True


def _port_accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK_HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _random_cluster_id() -> str:
    # Same shape as Kafka's Uuid.randomUuid().toString(): url-safe base64, no padding.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")


def _make_pdeathsig_preexec():
    """Ask Linux to SIGKILL the broker when the Python parent dies.

    atexit does not run when Python is SIGKILLed or crashes, and an orphaned broker
    would keep its ports and temp dir forever.  Caveat: Linux tracks the *thread*
    that forked, so start the broker from a thread that lives as long as it should.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    # Resolve prctl before fork: the child should do as little as possible.
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl
    parent_pid = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork() and prctl(): then nobody would
        # ever send the death signal.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


# Strong references on purpose: a LocalKafka dropped without stop() must still be
# reachable by the atexit hook, or its JVM would outlive the tests.
_LIVE_BROKERS: set[LocalKafka] = set()


@atexit.register
def _stop_live_brokers_at_exit() -> None:
    for broker in list(_LIVE_BROKERS):
        with contextlib.suppress(Exception):
            broker.stop(timeout_s=10)


_LOG4J2_PROPERTIES = """\
# Generated by orchestrator.kafka_local: everything to stdout, which the launcher
# redirects into broker.log so start-up failures can be quoted in errors.
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
# Per-request logging is noise at INFO (Kafka's shipped config does the same).
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


# ------------------------------------------------------------------------ broker


class LocalKafka:
    """A single-node KRaft Kafka (broker+controller) on 127.0.0.1, as a child JVM.

    Layout under ``data_dir`` (a temp dir removed by stop() unless one is given):
    ``kraft/`` is Kafka's ``log.dirs``, ``config/`` holds the generated
    server.properties and log4j2 config.  The broker's own log goes to
    ``<log_dir>/broker.log`` (``log_dir`` defaults to ``<data_dir>/logs``).

    kill() and restart() keep the data dir and both ports, so clients configured
    with the old bootstrap string reconnect to the same broker: that is what the
    fault tests (broker bounced during load) need.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        log_dir: Path | None = None,
        heap_mb: int = 1024,
        libs_dir: Path | None = None,
        server_properties: Mapping[str, str] | None = None,
    ) -> None:
        if heap_mb < 128:
            raise ValueError(f"heap_mb={heap_mb} is too small for a Kafka broker")
        self.port: int | None = port
        self.controller_port: int | None = None
        self.heap_mb = heap_mb
        self._requested_data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._requested_log_dir = Path(log_dir).resolve() if log_dir is not None else None
        self._libs_dir = Path(libs_dir).resolve() if libs_dir is not None else None
        self._server_property_overrides = dict(server_properties or {})
        self.data_dir: Path | None = self._requested_data_dir
        self.log_dir: Path | None = self._requested_log_dir
        self._owns_data_dir = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = None
        # Where the current launch begins in broker.log (it is appended across
        # restarts), so errors quote this run and not an earlier one.
        self._log_start_offset = 0
        self._lock = threading.RLock()

    # -- properties ----------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise LocalKafkaError("LocalKafka has not been started")
        return f"{LOOPBACK_HOST}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return self.log_dir / "broker.log" if self.log_dir is not None else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -----------------------------------------------------------

    def start(self, timeout_s: float = startup_timeout_s) -> str:
        """Start the broker and block until it can serve writes; return the bootstrap string."""
        with self._lock:
            if self.is_running():
                return self.bootstrap_servers
            self._prepare_dirs()
            libs_dir = self._libs_dir or ensure_kafka_jars(REPO_ROOT)
            java = _find_java()
            self._choose_ports()
            server_properties = self._write_config()
            self._format_storage_if_needed(java, libs_dir, server_properties)
            self._launch(java, libs_dir, server_properties)
            _LIVE_BROKERS.add(self)
            try:
                self._wait_until_ready(timeout_s)
            except BaseException:
                self._terminate(graceful=False, timeout_s=10)
                raise
            return self.bootstrap_servers

    def stop(self, timeout_s: float = shutdown_timeout_s) -> None:
        """Shut the broker down (SIGTERM, then SIGKILL) and drop a temp data dir."""
        with self._lock:
            self._terminate(graceful=True, timeout_s=timeout_s)
            _LIVE_BROKERS.discard(self)
            if self._owns_data_dir and self.data_dir is not None:
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self.data_dir = None
                if self._requested_log_dir is None:
                    self.log_dir = None
                self._owns_data_dir = False

    def kill(self) -> None:
        """SIGKILL the broker like a crashed host would; data and ports are kept for restart()."""
        with self._lock:
            self._terminate(graceful=False, timeout_s=shutdown_timeout_s)

    def restart(
        self,
        timeout_s: float = startup_timeout_s,
        *,
        hard: bool = False,
        downtime_s: float = 0.0,
    ) -> str:
        """Bounce the broker on the same data dir and ports.

        ``hard=True`` SIGKILLs instead of a clean shutdown (unclean log recovery on
        the way back up); ``downtime_s`` keeps it down a while so clients really
        observe the outage.
        """
        with self._lock:
            if self.data_dir is None:
                raise LocalKafkaError("restart() needs a broker that was started before")
            self._terminate(graceful=not hard, timeout_s=shutdown_timeout_s)
            if downtime_s > 0:
                time.sleep(downtime_s)
            return self.start(timeout_s=timeout_s)

    def __enter__(self) -> LocalKafka:
        try:
            self.start()
        except BaseException:
            # __exit__ is not called when __enter__ raises; don't leak the temp dir.
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"LocalKafka({LOOPBACK_HOST}:{self.port}, pid={self.pid}, {state})"

    # -- internals -----------------------------------------------------------

    def _prepare_dirs(self) -> None:
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="payorch-kafka-")).resolve()
            self._owns_data_dir = True
        if self.log_dir is None:
            self.log_dir = self.data_dir / "logs"
        for path in (self.data_dir / "kraft", self.data_dir / "config", self.log_dir):
            path.mkdir(parents=True, exist_ok=True)

    def _require_data_dir(self) -> Path:
        """The data dir, which `start` makes: the steps below need it (never `assert`, which
        `python -O` removes)."""
        if self.data_dir is None:
            raise RuntimeError("LocalKafka: the data dir is made by start(); call it first")
        return self.data_dir

    def _choose_ports(self) -> None:
        # Ports are chosen once per instance and reused by restarts; a persisted
        # data dir remembers them so a later LocalKafka(data_dir=...) comes back on
        # the same address when they are still free.
        self._require_data_dir()
        ports_file = self.data_dir / "config" / "ports.json"
        if self.controller_port is None and ports_file.is_file():
            with contextlib.suppress(ValueError, KeyError, TypeError, OSError):
                saved = json.loads(ports_file.read_text())
                if _port_is_free(int(saved["controller_port"])):
                    self.controller_port = int(saved["controller_port"])
                if self.port is None and _port_is_free(int(saved["port"])):
                    self.port = int(saved["port"])
        missing = [name for name in ("port", "controller_port") if getattr(self, name) is None]
        if missing:
            # Ask for one spare so two distinct ports remain after dropping one
            # that equals an already chosen port.
            taken = {self.port, self.controller_port}
            fresh = [p for p in _free_loopback_ports(3) if p not in taken]
            for name, candidate in zip(missing, fresh):
                setattr(self, name, candidate)
        ports_file.write_text(
            json.dumps({"port": self.port, "controller_port": self.controller_port}) + "\n"
        )

    def _write_config(self) -> Path:
        self._require_data_dir()
        config_dir = self.data_dir / "config"
        (config_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            # A static voter set (instead of format --standalone's dynamic quorum)
            # keeps no controller address inside the metadata log, so the data
            # dir survives a port change between runs.
            "controller.quorum.voters": f"{NODE_ID}@{LOOPBACK_HOST}:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://{LOOPBACK_HOST}:{self.port},"
                f"CONTROLLER://{LOOPBACK_HOST}:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK_HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "kraft"),
            # Topics are part of the orchestrator's contract; a typo must fail
            # loudly instead of silently creating a new topic.
            "auto.create.topics.enable": "false",
            "num.partitions": "6",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # Internal topics default to RF 3, which a single node can never satisfy.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Tests start consumers immediately; the 3s default join delay is pure wait.
            "group.initial.rebalance.delay.ms": "0",
            # After a SIGKILL the controller refuses the restarted broker's
            # registration until the old session expires (default 9s). Broker and
            # controller share one JVM on loopback, so a shorter session only
            # makes kill()+restart() faster; it cannot cause spurious fencing
            # unless the whole JVM stalls for 5s.
            "broker.heartbeat.interval.ms": "1000",
            # Not shorter: on a two-core machine under full load a starved JVM can miss
            # heartbeats for seconds, and a broker fenced by its own controller takes its
            # partitions offline mid-flow. 15s keeps that away at a small cost to
            # kill()+restart() drills.
            "broker.session.timeout.ms": "15000",
            # The defaults (3 network, 8 I/O threads) suit a many-core server; on a
            # two-core machine shared with a dozen client processes they mostly add
            # context switches. Two of each measured lower broker CPU per payment.
            "num.network.threads": "2",
            "num.io.threads": "2",
            # The controller appends a no-op record to the metadata log this often while
            # nothing else happens (KIP-835; default 500 ms), and each append is a write
            # and an fsync: with no clients at all, 10 s took an idle broker from 2.5-3.0 %
            # to 1.7-1.9 % of a core here. A single local node has no other broker that
            # would read the metadata log's progress from those records.
            "metadata.max.idle.interval.ms": "10000",
        }
        settings.update(self._server_property_overrides)
        server_properties = config_dir / "server.properties"
        server_properties.write_text(
            "# Generated by orchestrator.kafka_local; rewritten on every start.\n"
            + "".join(f"{key}={value}\n" for key, value in settings.items())
        )
        return server_properties

    def _java_command(self, java: str, libs_dir: Path, main_class: str) -> list[str]:
        self._require_data_dir()
        return [
            java,
            f"-Xms{min(256, self.heap_mb)}m",
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'config' / 'log4j2.properties'}",
            "-cp",
            f"{libs_dir}/*",
            main_class,
        ]

    def _format_storage_if_needed(self, java: str, libs_dir: Path, server_properties: Path) -> None:
        self._require_data_dir()
        if (self.data_dir / "kraft" / "meta.properties").is_file():
            return
        cluster_id = _random_cluster_id()
        cmd = self._java_command(java, libs_dir, "kafka.tools.StorageTool") + [
            "format",
            # One argument, not two: a base64 id may start with "-", which the tool's
            # argument parser would take for an option (seen: about 1 start in 64).
            f"--cluster-id={cluster_id}",
            "--config",
            str(server_properties),
        ]
        logger.debug("formatting KRaft storage: %s", " ".join(cmd))
        # bandit B603: Kafka's own storage tool, an argument list of ours, no shell.
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)  # nosec B603
        if result.returncode != 0:
            output_tail = "\n".join(
                (result.stdout + result.stderr).splitlines()[-broker_log_tail_lines:]
            )
            raise LocalKafkaError(
                f"kafka StorageTool format failed (exit {result.returncode}):\n{output_tail}"
            )
        logger.info("formatted KRaft storage in %s (cluster id %s)", self.data_dir, cluster_id)

    def _launch(self, java: str, libs_dir: Path, server_properties: Path) -> None:
        if self.log_path is None:
            raise RuntimeError("LocalKafka: the broker's log file is chosen by start(); call it first")
        cmd = self._java_command(java, libs_dir, "kafka.Kafka") + [str(server_properties)]
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n===== payorch: starting broker: {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        self._log_start_offset = self._log_file.tell()
        logger.info(
            "starting Kafka broker on %s:%s (controller :%s), log %s",
            LOOPBACK_HOST,
            self.port,
            self.controller_port,
            self.log_path,
        )
        # bandit B603: our own java command line, no shell.
        self._proc = subprocess.Popen(  # nosec B603
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Own session/process group: a Ctrl-C in the terminal goes to Python,
            # which then shuts the broker down in order, instead of racing it.
            start_new_session=True,
            preexec_fn=_make_pdeathsig_preexec(),
            close_fds=True,
        )

    def _wait_until_ready(self, timeout_s: float) -> None:
        """Block until the broker accepts metadata, topic and produce requests.

        list_topics alone only proves the broker's socket is up; creating a topic
        and producing to it proves the controller has elected itself and the
        broker has registered and caught up with the metadata log, which is what
        callers actually need.
        """
        # Imported lazily so `fetch` and `stop` work without librdkafka.
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        started = time.monotonic()
        deadline = started + timeout_s
        last_problem = "broker port never opened"
        admin = None
        probe_topic = f"__payorch_readiness_{uuid.uuid4().hex[:12]}"

        while True:
            if self._proc is None or self._proc.poll() is not None:
                exit_code = None if self._proc is None else self._proc.returncode
                raise LocalKafkaError(
                    f"Kafka broker exited with code {exit_code} during start-up; "
                    f"last {broker_log_tail_lines} lines of {self.log_path}:\n{self._log_tail()}"
                )
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise LocalKafkaError(
                    f"Kafka broker not ready after {timeout_s:.0f}s ({last_problem}); "
                    f"last {broker_log_tail_lines} lines of {self.log_path}:\n{self._log_tail()}"
                )
            request_timeout_s = max(0.5, min(readiness_request_timeout_s, remaining_s))
            try:
                # Polling the port first keeps librdkafka from logging a
                # connection-refused error every few ms while the JVM boots.
                if not _port_accepts_connections(self.port):
                    last_problem = "broker port not accepting connections"
                    time.sleep(readiness_probe_interval_s)
                    continue
                if admin is None:
                    admin = AdminClient(
                        {"bootstrap.servers": self.bootstrap_servers, "logger": _librdkafka_logger}
                    )
                # Short: a broker whose port is open answers metadata at once, and
                # a long wait here would delay noticing that the JVM died.
                if not admin.list_topics(timeout=min(2.0, request_timeout_s)).brokers:
                    last_problem = "metadata lists no brokers"
                    time.sleep(readiness_probe_interval_s)
                    continue
                self._probe_writes(admin, probe_topic, request_timeout_s)
                logger.info(
                    "Kafka broker ready at %s in %.1fs (pid %s)",
                    self.bootstrap_servers,
                    time.monotonic() - started,
                    self.pid,
                )
                return
            except (KafkaException, LocalKafkaError, TimeoutError) as exc:
                last_problem = str(exc) or type(exc).__name__
                logger.debug("broker not ready yet: %s", last_problem)
                time.sleep(readiness_probe_interval_s)

    def _probe_writes(self, admin, probe_topic: str, request_timeout_s: float) -> None:
        from confluent_kafka import KafkaError, KafkaException, Producer
        from confluent_kafka.admin import NewTopic

        # Looking up any group's coordinator makes the broker create
        # __consumer_offsets now, in the background, instead of stalling the
        # caller's first consumer for ~3s. The answer itself is irrelevant.
        admin.describe_consumer_groups([f"{probe_topic}-warmup"], request_timeout=request_timeout_s)

        futures = admin.create_topics(
            [NewTopic(probe_topic, num_partitions=1, replication_factor=1)],
            operation_timeout=request_timeout_s,
            request_timeout=request_timeout_s,
        )
        try:
            futures[probe_topic].result(timeout=request_timeout_s + 1)
        except KafkaException as exc:
            # An earlier attempt may have created it and then timed out waiting.
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

        delivery_errors: list[object] = []
        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "acks": "all",
                "message.timeout.ms": int(request_timeout_s * 1000),
                "logger": _librdkafka_logger,
            }
        )
        producer.produce(
            probe_topic,
            b"ready?",
            on_delivery=lambda err, _msg: delivery_errors.append(err) if err else None,
        )
        undelivered = producer.flush(request_timeout_s + 1)
        if undelivered or delivery_errors:
            raise LocalKafkaError(f"probe produce failed: {delivery_errors or 'timed out'}")

        futures = admin.delete_topics(
            [probe_topic], operation_timeout=request_timeout_s, request_timeout=request_timeout_s
        )
        futures[probe_topic].result(timeout=request_timeout_s + 1)

    def _terminate(self, *, graceful: bool, timeout_s: float) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            if graceful:
                logger.info("stopping Kafka broker pid %s", proc.pid)
                self._signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    logger.warning(
                        "Kafka broker pid %s ignored SIGTERM for %.0fs; sending SIGKILL",
                        proc.pid,
                        timeout_s,
                    )
            if proc.poll() is None:
                if not graceful:
                    logger.info("killing Kafka broker pid %s", proc.pid)
                self._signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=timeout_s)
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # start_new_session made the JVM a group leader, so its pid is the group id.
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def _log_tail(self) -> str:
        """The errors of this launch followed by the last lines of its log.

        The tail alone often shows only the orderly shutdown that follows a fatal
        error (a bind failure is ~300 lines before the end), so ERROR lines and
        their root causes are quoted first.
        """
        if self.log_path is None or not self.log_path.is_file():
            return "(no broker log)"
        errors: list[str] = []
        tail: deque[str] = deque(maxlen=broker_log_tail_lines)
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start_offset)
            for raw in log:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                tail.append(line)
                is_error = " ERROR " in line[:40] or " FATAL " in line[:40]
                is_cause = line.startswith("Caused by:")
                if (is_error or is_cause) and len(errors) < broker_log_error_lines:
                    errors.append(line)
        excerpt = "\n".join(tail)
        if errors:
            excerpt = "errors:\n" + "\n".join(errors) + "\n... last lines:\n" + excerpt
        return excerpt


# --------------------------------------------------------------------------- CLI


def _state_path(repo_root: Path = REPO_ROOT) -> Path:
    return repo_root / STATE_RELPATH


def _cmd_fetch(_args: argparse.Namespace) -> int:
    libs_dir = ensure_kafka_jars(REPO_ROOT)
    print(f"kafka jars in {libs_dir}")
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    state_path = Path(args.state_file) if args.state_file else _state_path()

    def interrupt(signum, _frame):
        # Treat SIGTERM/SIGHUP like Ctrl-C so every exit path runs broker.stop().
        logger.info("received %s, stopping broker", signal.Signals(signum).name)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)

    broker = LocalKafka(
        port=args.port,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        log_dir=Path(args.log_dir) if args.log_dir else None,
        heap_mb=args.heap_mb,
    )
    try:
        bootstrap = broker.start(timeout_s=args.timeout_s)
        state_path.parent.mkdir(parents=True, exist_ok=True)
        state_path.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "broker_pid": broker.pid,
                    "bootstrap_servers": bootstrap,
                    "log_path": str(broker.log_path),
                }
            )
            + "\n"
        )
        print(f"kafka ready at {bootstrap}", flush=True)
        while broker.is_running():
            time.sleep(0.5)
        logger.error(
            "Kafka broker exited unexpectedly; tail of %s:\n%s", broker.log_path, broker._log_tail()
        )
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
            if json.loads(state_path.read_text())["pid"] == os.getpid():
                state_path.unlink()


def _cmd_stop(args: argparse.Namespace) -> int:
    state_path = Path(args.state_file) if args.state_file else _state_path()
    try:
        state = json.loads(state_path.read_text())
    except FileNotFoundError:
        print(f"no local kafka running ({state_path} not found)")
        return 0
    pid = int(state["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"local kafka supervisor pid {pid} is already gone; removing {state_path}")
        state_path.unlink(missing_ok=True)
        return 0
    deadline = time.monotonic() + args.timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("local kafka stopped")
            return 0
        time.sleep(0.2)
    print(
        f"local kafka supervisor pid {pid} did not exit within {args.timeout_s:.0f}s",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.kafka_local",
        description="Run a real single-node Apache Kafka (KRaft) on 127.0.0.1.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    fetch = sub.add_parser("fetch", help="fetch the Kafka jars with Maven (idempotent)")
    fetch.set_defaults(func=_cmd_fetch)

    start = sub.add_parser("start", help="run a broker in the foreground until Ctrl-C/SIGTERM")
    start.add_argument("--port", type=int, default=None, help="broker port (default: a free one)")
    start.add_argument("--data-dir", default=None, help="keep data here (default: temp, deleted)")
    start.add_argument("--log-dir", default=None, help="where broker.log goes")
    start.add_argument("--heap-mb", type=int, default=1024)
    start.add_argument("--timeout-s", type=float, default=startup_timeout_s)
    start.add_argument("--state-file", default=None, help=f"default: <repo>/{STATE_RELPATH}")
    start.set_defaults(func=_cmd_start)

    stop = sub.add_parser("stop", help="stop a broker started with `start`")
    stop.add_argument("--timeout-s", type=float, default=shutdown_timeout_s + 10)
    stop.add_argument("--state-file", default=None, help=f"default: <repo>/{STATE_RELPATH}")
    stop.set_defaults(func=_cmd_stop)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except LocalKafkaError as exc:
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
