"""N genserve replicas behind HAProxy on this machine, on loopback.

    python -m deploy.local --replicas 2 --port 8500 [--models DIR] [-- --drain-delay 2 ...]

Starts the replicas on ephemeral ports (with Prometheus metrics), renders haproxy/haproxy.cfg.template
into a temporary folder, starts ``haproxy -db`` and waits until the balancer's own health check has
seen every replica SERVING; Ctrl-C or SIGTERM stops everything. Flags after ``--`` go to every
``genserve serve`` (``--drain-delay`` is what makes a rolling restart lose no call: the replica
reports NOT_SERVING and keeps answering until HAProxy has taken it out).

``LocalDeployment`` is the same as a class, for tests and benchmarks: ``start``, ``rolling_restart``,
``kill``, ``add_replica`` (through HAProxy's runtime API, no reload), ``server_states``,
``requests_per_replica``, ``stop``. A replica is restarted on the port it had, so the balancer's
configuration never changes.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.haproxy import healthcheck

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).parent / "haproxy" / "haproxy.cfg.template"
BACKEND = "replicas"
HOST = "127.0.0.1"
# Every server line's settings. The config file puts them in "default-server", but servers added
# through the runtime API take nothing from it, so add_replica passes the same string.
# check-proto none: the check speaks raw bytes (deploy/haproxy/healthcheck.py), not through
# HAProxy's h2 multiplexer, which the "proto h2" of the traffic would otherwise select.
CHECK_INTER, CHECK_FASTINTER, CHECK_FALL, CHECK_RISE = 0.5, 0.25, 2, 2  # s, s, checks, checks
SERVER_OPTIONS = (
    f"proto h2 check check-proto none inter {CHECK_INTER * 1000:.0f}ms fastinter {CHECK_FASTINTER * 1000:.0f}ms "
    f"downinter 1s fall {CHECK_FALL} rise {CHECK_RISE}"
)
START_TIMEOUT = 90.0  # s for a replica to load its models, or for HAProxy to see it UP
STOP_TIMEOUT = 60.0  # s for a replica to exit after SIGTERM: its drain delay and grace period
GENSERVE = Path(sys.executable).with_name("genserve")  # this environment's console script
REQUESTS_TOTAL = re.compile(r"^genserve_requests_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)", re.MULTILINE)


class DeploymentError(RuntimeError):
    """A replica or HAProxy did not start, stop or change state as expected; the message says which."""


def haproxy_version(haproxy: str = "haproxy") -> str | None:
    """``haproxy -v``'s version number, or None if there is no such command."""
    path = shutil.which(haproxy)
    if path is None:
        return None
    out = subprocess.run([path, "-v"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else out.strip()


def free_port() -> int:
    """A loopback port nobody listens on now (HAProxy cannot report a port 0 bind)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def render_config(port: int, stats_socket: Path, servers: Sequence[tuple[str, int]]) -> str:
    """haproxy.cfg for a frontend on ``HOST:port`` and one server line per (name, port)."""
    return string.Template(TEMPLATE.read_text()).substitute(
        bind_address=HOST,
        port=port,
        stats_socket=stats_socket,
        check_request=healthcheck.health_check_request().hex(),
        any_answer_regex=healthcheck.expect_any_answer(),
        serving_answer=healthcheck.expect_serving(),
        server_options=SERVER_OPTIONS,
        servers="\n".join(f"    server {name} {HOST}:{p}" for name, p in servers),
    )


class Replica:
    """One ``genserve serve`` process on loopback; its stderr goes to ``log_path`` and is scanned
    for the bound ports. ``port`` is kept across restarts."""

    def __init__(self, name: str, models: Path, extra_args: Sequence[str], log_dir: Path, command: Path = GENSERVE):
        self.name, self.models, self.extra_args, self.command = name, models, list(extra_args), command
        self.log_path = log_dir / f"{name}.log"
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None

    def start(self) -> Replica:
        """Spawn on ``port`` (0 the first time); returns at once, see ``wait_until_serving``."""
        cmd = [str(self.command), "serve", "--host", HOST, "--port", str(self.port or 0)]
        cmd += ["--models", str(self.models), "--metrics-port", "0", *self.extra_args]
        self.metrics_port = None
        if self._reader is not None and not self.running:
            self._reader.join(timeout=5)  # the last run's reader, so its last lines precede this run's header
        with self._changed:
            self._lines, self._eof = [], False
            self.starts += 1
        # Own session: a Ctrl-C in the terminal reaches deploy.local only, which stops things in order.
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        self._reader = threading.Thread(target=self._read_log, args=(self.proc, self.starts), daemon=True)
        self._reader.start()
        return self

    def _read_log(self, proc: subprocess.Popen, start: int) -> None:
        with open(self.log_path, "a") as out:
            out.write(f"--- start {start}: pid {proc.pid}\n")
            for line in proc.stderr:
                out.write(line)
                out.flush()
                with self._changed:
                    if start == self.starts:
                        self._lines.append(line)
                        self._changed.notify_all()
        with self._changed:
            # Only this run's reader ends this run: an earlier run's, still reading when start() was
            # called again, would otherwise mark the new process exited before it had logged a line.
            if start == self.starts:
                self._eof = True
                self._changed.notify_all()

    def _wait_for_line(self, pattern: str, timeout: float) -> re.Match:
        regex, deadline = re.compile(pattern), time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self._lines:
                    if match := regex.search(line):
                        return match
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    what = "exited" if self._eof else f"did not log it within {timeout:g} s"
                    raise DeploymentError(f"replica {self.name} {what} before logging {pattern!r}; see {self.log_path}")
                self._changed.wait(remaining)

    def wait_until_serving(self, timeout: float = START_TIMEOUT) -> Replica:
        """Wait for the bound ports in the log, then for the health check's own bytes to get SERVING."""
        deadline = time.monotonic() + timeout
        self.port = int(self._wait_for_line(r"listening on \S+:(\d+)$", timeout).group(1))
        self.metrics_port = int(self._wait_for_line(r"metrics on http://\S+:(\d+)/metrics", timeout).group(1))
        while healthcheck.probe(HOST, self.port) != healthcheck.SERVING:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise DeploymentError(f"replica {self.name} never reported SERVING; see {self.log_path}")
            time.sleep(0.1)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """The exit code, once the process has exited (DeploymentError if it has not within ``timeout``)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise DeploymentError(f"replica {self.name} still running {timeout:g} s after the signal") from exc

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT; the exit code (None if never run)."""
        if self.proc is None:
            return None
        if self.running:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def requests(self, model: str | None = None, code: str | None = "OK") -> int:
        """Finished Generate calls of this process (``genserve_requests_total``), for ``model`` (None:
        all) with status ``code`` (None: any). A restarted process counts from zero."""
        with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for match in REQUESTS_TOTAL.finditer(text):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
            if (model is None or labels.get("model") == model) and (code is None or labels.get("code") == code):
                total += float(match["value"])
        return int(total)


@dataclass(frozen=True)
class ServerState:
    """One server as HAProxy sees it (``show stat``): ``status`` UP, DOWN, MAINT, ... (with "1/2"-style
    transitions), ``check`` the last check's result (L7OK, L7RSP, L4CON, ...), ``current`` the calls
    it has in flight (HTTP/2 streams), ``total`` calls sent to it, ``retries``/``redispatches`` counted
    on it."""

    status: str
    check: str
    check_desc: str
    current: int
    total: int
    retries: int
    redispatches: int

    @property
    def up(self) -> bool:
        """UP, and the latest check saw SERVING (HAProxy 2.6 starts servers UP before any check)."""
        return self.status == "UP" and self.check == "L7OK"

    @property
    def out(self) -> bool:
        """Gets no new calls: DOWN (also "DOWN 1/2", going up), in maintenance or draining. A server
        "UP 1/2" (one check failed, going down) still gets calls."""
        return self.status.startswith(("DOWN", "MAINT", "DRAIN", "NOLB"))


class LocalDeployment:
    """HAProxy on ``HOST:port`` in front of ``replicas`` genserve processes; see the module docstring.

    ``serve_args`` go to every replica (e.g. ``--drain-delay 2``); ``workdir`` (default: a new temporary
    folder, removed by ``stop``) holds haproxy.cfg, the runtime API socket and every process's log."""

    def __init__(
        self,
        models: Path,
        replicas: int = 2,
        port: int = 0,
        serve_args: Sequence[str] = (),
        workdir: Path | None = None,
        haproxy: str = "haproxy",
        command: Path = GENSERVE,
    ):
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.models, self.serve_args, self.command = Path(models), list(serve_args), command
        self.port = port or free_port()
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="genserve-haproxy-")) if workdir is None else Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "haproxy.cfg"
        self.stats_socket = self.workdir / "admin.sock"
        self.haproxy_log = self.workdir / "haproxy.log"
        self.haproxy = shutil.which(haproxy)
        if self.haproxy is None:
            raise DeploymentError(f"no {haproxy} on PATH (Debian: apt-get install haproxy)")
        self.replicas = [self._new_replica(f"r{i}") for i in range(replicas)]
        self._haproxy_proc: subprocess.Popen | None = None

    def _new_replica(self, name: str) -> Replica:
        return Replica(name, self.models, self.serve_args, self.workdir, self.command)

    @property
    def target(self) -> str:
        """Where clients connect: HAProxy's frontend."""
        return f"{HOST}:{self.port}"

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> LocalDeployment:
        """Replicas (in parallel), then HAProxy; returns once every server is UP on a SERVING check."""
        try:
            for replica in self.replicas:
                replica.start()
            for replica in self.replicas:
                replica.wait_until_serving()
            self.config_path.write_text(render_config(self.port, self.stats_socket, self._server_lines()))
            check = subprocess.run([self.haproxy, "-c", "-f", str(self.config_path)], capture_output=True, text=True)
            if check.returncode != 0:
                raise DeploymentError(f"haproxy -c rejects {self.config_path}:\n{check.stdout}{check.stderr}")
            with open(self.haproxy_log, "w") as out:
                self._haproxy_proc = subprocess.Popen(
                    [self.haproxy, "-db", "-f", str(self.config_path)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._wait_for_api()
            for replica in self.replicas:
                self.wait_for_state(replica.name, up=True)
        except BaseException:
            self.stop()
            raise
        log.info("HAProxy on %s in front of %s", self.target, ", ".join(f"{r.name}={r.port}" for r in self.replicas))
        return self

    def _wait_for_api(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                self.api("show info")
                return
            if self._haproxy_proc.poll() is not None or time.monotonic() > deadline:
                raise DeploymentError(f"HAProxy's runtime API never answered; see {self.haproxy_log}")
            time.sleep(0.05)

    def _server_lines(self) -> list[tuple[str, int]]:
        return [(r.name, r.port) for r in self.replicas]

    def stop(self) -> None:
        """HAProxy first (no new calls reach a stopping replica), then the replicas; idempotent."""
        if self._haproxy_proc is not None and self._haproxy_proc.poll() is None:
            self._haproxy_proc.terminate()
            try:
                self._haproxy_proc.wait(10)
            except subprocess.TimeoutExpired:
                self._haproxy_proc.kill()
                self._haproxy_proc.wait()
        for replica in self.replicas:
            replica.signal(signal.SIGTERM)  # all at once: their drain delays overlap
        for replica in self.replicas:
            replica.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- operations --------------------------------------------------------------------------------

    def rolling_restart(self, timeout: float = STOP_TIMEOUT) -> list[dict[str, float]]:
        """For each replica in turn: SIGTERM, wait until HAProxy has it out and it exited 0, start a new
        one on the same port, wait until HAProxy has it UP. Returns per replica the seconds each phase
        took (``out``: SIGTERM to not UP; ``exit``: to its exit; ``up``: restart to UP)."""
        phases = []
        for replica in self.replicas:
            began = time.monotonic()
            replica.signal(signal.SIGTERM)
            self.wait_for_state(replica.name, up=False, timeout=timeout)
            out = time.monotonic() - began
            code = replica.wait(timeout)
            if code != 0:
                raise DeploymentError(f"{replica.name} exited with {code} after SIGTERM; see {replica.log_path}")
            exited = time.monotonic() - began
            replica.start().wait_until_serving()
            self.wait_for_state(replica.name, up=True)
            phases.append({"out": out, "exit": exited, "up": time.monotonic() - began - exited})
            log.info("restarted %s: out of the balancer after %.2f s, exited after %.2f s", replica.name, out, exited)
        return phases

    def kill(self, index: int) -> float:
        """SIGKILL replica ``index``; returns the time.monotonic() of the kill."""
        replica = self.replicas[index]
        killed_at = time.monotonic()
        replica.signal(signal.SIGKILL)
        replica.proc.wait()
        return killed_at

    def restart(self, index: int) -> None:
        """Start replica ``index`` again (after ``kill``) on its port and wait until it is UP."""
        replica = self.replicas[index]
        if replica.running:
            raise DeploymentError(f"replica {replica.name} is still running")
        replica.start().wait_until_serving()
        self.wait_for_state(replica.name, up=True)

    def add_replica(self) -> Replica:
        """Start one more replica and add it to the running HAProxy through the runtime API (a dynamic
        server, HAProxy >= 2.4); returns once HAProxy has it UP."""
        replica = self._new_replica(f"r{len(self.replicas)}")
        self.replicas.append(replica)
        replica.start().wait_until_serving()
        server = f"{BACKEND}/{replica.name}"
        # Dynamic servers start in maintenance with checks off, and take nothing from default-server.
        for command in (f"add server {server} {HOST}:{replica.port} {SERVER_OPTIONS}", f"enable health {server}"):
            self._expect_empty(command)
        self._expect_empty(f"enable server {server}")
        self.wait_for_state(replica.name, up=True)
        return replica

    def _expect_empty(self, command: str) -> None:
        answer = self.api(command).strip()
        if answer and answer != "New server registered.":
            raise DeploymentError(f"HAProxy runtime API: {command!r} answered {answer!r}")

    # --- observation -------------------------------------------------------------------------------

    def api(self, command: str) -> str:
        """One command on HAProxy's runtime API (the stats socket); its whole answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_states(self) -> dict[str, ServerState]:
        """Each server of the backend as HAProxy sees it now (``show stat``), by name."""
        lines = self.api("show stat").lstrip("# ").splitlines()
        states = {}
        for row in csv.DictReader(line for line in lines if line):
            if row["pxname"] == BACKEND and row["svname"] not in ("BACKEND", "FRONTEND"):
                states[row["svname"]] = ServerState(
                    status=row["status"],
                    check=row["check_status"].lstrip("* "),
                    check_desc=row.get("last_chk", ""),
                    current=int(row["scur"] or 0),
                    total=int(row["stot"] or 0),
                    retries=int(row["wretr"] or 0),
                    redispatches=int(row["wredis"] or 0),
                )
        return states

    def backend_counters(self) -> dict[str, int]:
        """The backend's totals: calls, retries, redispatches, and 5xx answers HAProxy made or passed."""
        for row in csv.DictReader(self.api("show stat").lstrip("# ").splitlines()):
            if row["pxname"] == BACKEND and row["svname"] == "BACKEND":
                return {
                    key: int(row[field] or 0)
                    for key, field in (
                        ("total", "stot"),
                        ("retries", "wretr"),
                        ("redispatches", "wredis"),
                        ("http_5xx", "hrsp_5xx"),
                        ("connection_errors", "econ"),
                        ("response_errors", "eresp"),
                    )
                }
        raise DeploymentError(f"no backend {BACKEND} in HAProxy's show stat")

    def wait_for_state(self, name: str, up: bool, timeout: float = START_TIMEOUT, poll: float = 0.05) -> float:
        """Poll HAProxy until server ``name`` is UP on a SERVING check (``up``), or out of rotation
        (``ServerState.out``); returns the time.monotonic() it was first seen so."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.server_states().get(name)
            if state is not None and (state.up if up else state.out):
                return time.monotonic()
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"HAProxy did not see {name} {'UP' if up else 'out'} within {timeout:g} s: {state}; "
                    f"see {self.haproxy_log}"
                )
            time.sleep(poll)

    def requests_per_replica(self, model: str | None = None, code: str | None = "OK") -> dict[str, int]:
        """Each running replica's ``genserve_requests_total`` for ``model`` and ``code`` (see Replica.requests)."""
        return {r.name: r.requests(model, code) for r in self.replicas if r.running}


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local",
        description="genserve replicas behind HAProxy on loopback, until Ctrl-C. Flags after -- go to "
        "every `genserve serve` (e.g. -- --drain-delay 2 --grace-period 30).",
    )
    parser.add_argument("--replicas", type=int, default=2, metavar="N", help="genserve processes (default 2)")
    parser.add_argument("--port", type=int, default=50051, metavar="P", help="HAProxy's port (default 50051)")
    parser.add_argument(
        "--models", type=Path, default=Path(__file__).resolve().parents[1] / "models", help="model repository"
    )
    parser.add_argument("serve_args", nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        deployment = LocalDeployment(args.models, args.replicas, args.port, args.serve_args)
    except DeploymentError as exc:
        log.error("%s", exc)
        return 1
    try:
        deployment.start()
        print(f"genserve on {deployment.target} (HAProxy, {args.replicas} replicas); Ctrl-C stops", flush=True)
        for replica in deployment.replicas:
            print(f"  {replica.name}: {HOST}:{replica.port}, metrics on :{replica.metrics_port}", flush=True)
        print(f"  runtime API: {deployment.stats_socket}; logs in {deployment.workdir}", flush=True)
        while not stop.wait(1.0):
            if exited := [r for r in deployment.replicas if not r.running]:
                for replica in exited:
                    log.error("replica %s exited (%s); see %s", replica.name, replica.proc.returncode, replica.log_path)
                return 1
    except DeploymentError as exc:
        log.error("%s", exc)
        return 1
    finally:
        with contextlib.suppress(Exception):
            deployment.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
