"""``genserve profile``: load a model, read the server's traces of the same calls, and write a report
folder of where the time went (``genserve/profile.py``)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from genserve.cli.defaults import DEFAULT_MODELS

log = logging.getLogger("genserve")  # one logger for every verb: its name is in each line the user reads

START_TIMEOUT = 300.0  # s for the server to load its models and report SERVING
STOP_TIMEOUT = 60.0  # s for it to drain and write its trace and engine profiles
TRACE_WAIT = 10.0  # s at most for a running server's trace file to catch up with the load
TRACE_SETTLE = 2.5  # s without new calls in the file: it has caught up (it flushes every 1 s)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="load one model and report where each request's time goes (queue, compute, send, ...)",
        description="Run a load against one model and write a report folder: throughput, client latency, "
        "the per-stage breakdown of the server's traced calls (queue, compute, step wait, serialize, send, "
        "server other, client+network), the batch sizes, plots, and the server's trace for Perfetto. "
        "By default it starts its own server (genserve serve --trace-file OUT/trace.json) and stops it "
        "after the load. With --server, that server must already be tracing every call to a file "
        "(genserve serve --trace-file PATH), given as --server-trace-file: the calls in the load's "
        "window are read from it.",
    )
    p.add_argument("--model", required=True, metavar="NAME", help="a name from `genserve models`")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the report folder (new or empty)")
    where = p.add_argument_group("the server")
    where.add_argument(
        "--models", type=Path, metavar="DIR", help=f"the model repository of the server it starts ({DEFAULT_MODELS})"
    )
    where.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="profile a running server instead; it must trace every call to a file (serve --trace-file PATH)",
    )
    where.add_argument(
        "--server-trace-file", type=Path, metavar="PATH", help="with --server: that server's --trace-file"
    )
    load = p.add_argument_group("the load (genserve bench load)")
    mode = load.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=int, metavar="N", help="closed loop, N outstanding (default 8)")
    mode.add_argument("--rate", type=float, metavar="R", help="open loop: Poisson arrivals, R per second")
    load.add_argument("--duration", type=float, default=10.0, metavar="S", help="seconds measured (default 10)")
    load.add_argument("--warmup", type=float, default=1.0, metavar="S", help="seconds uncounted first (default 1)")
    load.add_argument("-n", "--num-images", type=int, default=1, metavar="K", help="images per request (default 1)")
    load.add_argument("--steps", type=int, metavar="K", help="diffusion steps per request (default: the model's)")
    extra = p.add_argument_group("deeper profiles (only with the server it starts)")
    extra.add_argument(
        "--engine-profile",
        action="store_true",
        help="turn on the engines' own profilers (serve --engine-profile OUT/engine): ONNX Runtime's, or "
        "torch.profiler's; they slow every call",
    )
    extra.add_argument(
        "--py-spy",
        action="store_true",
        help="sample the server's Python stacks during the load with py-spy (when installed) into OUT/pyspy.json",
    )
    p.set_defaults(func=_profile)


class _Server:
    """``genserve serve --port 0`` tracing every call into the report folder, its log into server.log."""

    def __init__(self, args: list[str], log_path: Path):
        self.command = [sys.executable, "-m", "genserve.cli", "serve", "--host", "127.0.0.1", "--port", "0", *args]
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log_path = log_path
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._listening = threading.Event()
        self._tail: list[str] = []
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        with self.log_path.open("w") as out:
            for line in self.proc.stderr:
                out.write(line)
                out.flush()
                self._tail = [*self._tail[-19:], line]
                if self.port is None and (m := re.search(r'listening on [^\s"]+:(\d+)(?:"|$)', line)):
                    self.port = int(m.group(1))
                    self._listening.set()
                if self.metrics_port is None and (m := re.search(r"metrics on http://[^\s/]+:(\d+)/metrics", line)):
                    self.metrics_port = int(m.group(1))
        self._listening.set()  # exited

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_until_serving(self, timeout: float) -> None:
        from genserve.client import GenserveClient

        deadline = time.monotonic() + timeout
        self._listening.wait(timeout)
        if self.port is None:
            raise RuntimeError(f"the server exited or did not listen within {timeout:g} s:\n{''.join(self._tail)}")
        with GenserveClient(self.target) as client:
            try:
                client.wait_until_serving(max(1.0, deadline - time.monotonic()))
            except TimeoutError:
                raise RuntimeError(f"the server did not report SERVING:\n{''.join(self._tail)}") from None

    def scrape_metrics(self) -> str | None:
        if self.metrics_port is None:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
                return response.read().decode()
        except OSError as exc:
            log.warning("could not scrape the server's metrics: %s", exc)
            return None

    def stop(self) -> int | None:
        """SIGTERM, and wait for it to drain and exit (its trace and profiles are complete then)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("the server did not stop within %g s; killing it", STOP_TIMEOUT)
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


def _start_py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    exe = shutil.which("py-spy")
    if exe is None:
        return None
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(math.ceil(seconds)), "--rate", "100"]
    cmd += ["--format", "speedscope", "-o", str(out / "pyspy.json")]
    log.info("py-spy: %s", shlex.join(cmd))
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(out / "pyspy.log").open("w"))


def _profile(args: argparse.Namespace) -> int:
    from genserve import profile
    from genserve.loadgen import LoadSpec, run_load
    from genserve.serving.tracing import read_trace_file

    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        log.error("--out %s: exists and is not an empty folder; give a new one", out)
        return 2
    if (args.server is None) != (args.server_trace_file is None):
        log.error("--server and --server-trace-file go together: a running server's calls are read from its trace")
        return 2
    if args.server is not None and args.models is not None:
        log.error("--models is for the server this command starts; --server profiles a running one")
        return 2
    own = args.server is None
    concurrency = args.concurrency if args.concurrency is not None or args.rate is not None else 8
    try:
        spec_args = dict(
            concurrency=concurrency,
            rate=args.rate,
            duration=args.duration,
            warmup=args.warmup,
            num_images=args.num_images,
            steps=args.steps,
        )
        LoadSpec("-", args.model, **spec_args)  # checked before a server starts
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["genserve", *sys.argv[1:]]) if "profile" in sys.argv[1:] else f"genserve profile {args}"
    notes: list[str] = []
    files: dict[str, str] = {}
    server = None
    py_spy = None
    if own:
        models = args.models or DEFAULT_MODELS
        serve_args = ["--models", str(models), "--trace-file", str(out / "trace.json"), "--metrics-port", "0"]
        if args.engine_profile:
            serve_args += ["--engine-profile", str(out / "engine")]
        log.info("profile: starting genserve serve %s", shlex.join(serve_args))
        started = time.monotonic()
        server = _Server(serve_args, out / "server.log")
        try:
            server.wait_until_serving(START_TIMEOUT)
        except RuntimeError as exc:
            server.stop()
            log.error("%s", exc)
            return 1
        log.info("profile: server SERVING on %s after %.1f s", server.target, time.monotonic() - started)
        target, description = server.target, f"started by this command: `genserve serve {shlex.join(serve_args)}`"
    else:
        target, description = args.server, f"`{args.server}`, its traces read from `{args.server_trace_file}`"
        for flag, given in (("--engine-profile", args.engine_profile), ("--py-spy", args.py_spy)):
            if given:
                notes.append(f"{flag} was ignored: it needs a server this command starts")
    try:
        if args.py_spy and server is not None:
            py_spy = _start_py_spy(server.proc.pid, args.warmup + args.duration, out)
            if py_spy is None:
                notes.append("py-spy was not installed, so no Python stack profile was taken (pip install py-spy)")
        spec = LoadSpec(target, args.model, **spec_args)
        log.info("profile: load on %s", target)
        t0 = time.time()
        try:
            report = run_load(spec, progress=True)
        except ConnectionError as exc:
            log.error("%s", exc)
            return 1
        log.info("profile: %s", report.summary())
        window = (t0 + spec.warmup, t0 + spec.warmup + spec.duration)
        if server is not None and (metrics := server.scrape_metrics()) is not None:
            (out / "metrics.prom").write_text(metrics)
            files["metrics.prom"] = "the server's Prometheus metrics after the load"
    finally:
        if server is not None:
            log.info("profile: stopping the server (SIGTERM) so its trace and engine profiles are complete")
            code = server.stop()
            if code != 0:
                log.warning("the server exited with %s; see %s", code, server.log_path)
        if py_spy is not None:
            try:
                py_spy.wait(30)
            except subprocess.TimeoutExpired:
                py_spy.terminate()
                py_spy.wait()
    ok_latencies = [r.latency for r in report.records if r.status == "OK"]
    if own:  # every call of the model since t0 is the load's: the window is counted, not timed
        every = profile.calls_from_events(read_trace_file(out / "trace.json"))
        calls = profile.load_calls(every, args.model, t0, report.warmup_requests, len(report.records))
        if calls:
            window = (calls[0].start, calls[0].start + spec.duration)
        files["trace.json"] = "the server's traces, one track per call (open it in https://ui.perfetto.dev)"
        files["server.log"] = "the server's log"
    else:
        calls, events = _wait_for_calls(args.server_trace_file, window, args.model, len(report.records))
        tracks = {c.track for c in calls}
        kept = [e for e in events if e.get("ph") == "M" or e.get("tid") in tracks]
        (out / "trace.json").write_text(json.dumps(kept) + "\n")
        files["trace.json"] = f"the window's calls from {args.server_trace_file} (open it in https://ui.perfetto.dev)"
    log.info("profile: %d traced calls of %s in the window", len(calls), args.model)
    if not calls:
        notes.append("no traced calls in the window: is the server tracing every call (--trace-rate 1)?")
    if args.engine_profile and own:
        engine_files = sorted((out / "engine").glob("*")) if (out / "engine").is_dir() else []
        for path in engine_files:
            files[str(path.relative_to(out))] = "the engine's own profile (Chrome trace JSON: Perfetto opens it)"
        if not engine_files:
            notes.append("--engine-profile: the server wrote no engine profile (see server.log)")
        else:
            notes.append("the engine profilers were on: they slow every call, so these timings are inflated")
    if py_spy is not None:
        if (out / "pyspy.json").is_file():
            files["pyspy.json"] = "py-spy's samples of the server's Python stacks (open it in https://speedscope.app)"
        else:
            notes.append(f"py-spy exited with {py_spy.returncode} and wrote no profile; see pyspy.log")
    result = profile.Profile(
        command=command,
        load={**report.to_dict(), "records": [r.__dict__ for r in report.records]},
        client_latencies=ok_latencies,
        window=window,
        calls=calls,
        server=description,
        notes=notes,
        files=files,
    )
    summary = profile.write_report(result, out)
    log.info("profile: wrote %s", out)
    print(summary.read_text())
    return 0


def _wait_for_calls(path: Path, window: tuple[float, float], model: str, expected: int) -> tuple[list, list]:
    """A running server's traced calls in the window, waiting for its file to catch up (spans are
    written in batches, about every second, once their call has ended): until there are as many as
    the client counted, or their number has not changed for TRACE_SETTLE s, or TRACE_WAIT s."""
    from genserve import profile
    from genserve.serving.tracing import read_trace_file

    started = changed = time.monotonic()
    seen = -1
    while True:
        events = read_trace_file(path)
        calls = profile.in_window(profile.calls_from_events(events), *window, model)
        now = time.monotonic()
        if len(calls) != seen:
            seen, changed = len(calls), now
        if len(calls) >= expected or now - changed > TRACE_SETTLE or now - started > TRACE_WAIT:
            return calls, events
        time.sleep(0.5)
