"""deploy/local.py's Replica on a stand-in command (a shell script that logs the line a genserve
replica logs and exits): restarts read each run's own log, not the end of the last run's."""

from __future__ import annotations

from pathlib import Path

from deploy.local import Replica


def test_a_restarted_replica_waits_for_its_own_lines_not_the_last_runs_end(tmp_path: Path):
    script = tmp_path / "fake-genserve"
    script.write_text('#!/bin/sh\nsleep 0.05\necho "listening on 127.0.0.1:4242" >&2\n')
    script.chmod(0o755)
    replica = Replica("r0", tmp_path, [], tmp_path, command=script)
    for _ in range(30):
        replica.start()
        # The last run's reader thread may still be at its end of file when start() comes back: it
        # must not end the run just started, nor hand it the last run's lines.
        assert replica._wait_for_line(r"listening on \S+:(\d+)$", timeout=10).group(1) == "4242"
        assert replica.wait(timeout=10) == 0
    assert replica.log_path.read_text().count("--- start") == 30
