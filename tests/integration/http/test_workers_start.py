"""`tally serve --workers N`: what its start leaves behind, and how it (and the one
process) answers an address it cannot take. Real processes, a real socket, the real
/tmp."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from channels.workers import (
    RESTART_DELAY_MAX_S,
    RESTART_DELAY_S,
    RUN_DIR_PREFIX,
    remove_stale_run_dirs,
    restart_delay,
)
from tests.http_helpers import REPO_ROOT


def run_dirs() -> set[str]:
    parent = tempfile.gettempdir()
    return {name for name in os.listdir(parent) if name.startswith(RUN_DIR_PREFIX)}


def test_a_port_in_use_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    """The public address is taken: exit 2 naming it, no traceback, no front-end
    started, and the private directory (socket, secret) removed."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        before = run_dirs()
        done = subprocess.run(
            [sys.executable, "-m", "core", "serve", "--dev", "--port", str(port),
             "--data", str(tmp_path / "data"), "--access-log", "off", "--workers", "2"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"tally serve: cannot listen on 127.0.0.1:{port}:" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "worker_started" not in done.stderr
    assert run_dirs() <= before


def test_a_terminals_port_in_use_is_named(tmp_path: Path) -> None:
    """With --iso8583 the front-ends' terminal socket is bound by the core too: that
    address taken is exit 2 naming it (not the HTTP one), and nothing left behind."""
    with socket.create_server(("127.0.0.1", 0)) as taken, socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port, http_port = taken.getsockname()[1], free.getsockname()[1]
        free.close()
        before = run_dirs()
        done = subprocess.run(
            [sys.executable, "-m", "core", "serve", "--dev", "--port", str(http_port),
             "--data", str(tmp_path / "data"), "--access-log", "off", "--workers", "2",
             "--iso8583", f"127.0.0.1:{port}"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"tally serve: cannot listen on 127.0.0.1:{port}:" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "worker_started" not in done.stderr
    assert run_dirs() <= before


def test_the_one_process_says_a_port_in_use_before_it_recovers(tmp_path: Path) -> None:
    """Without --workers too (hypercorn and uvicorn): exit 2 naming the address, no
    traceback, and before the bank recovered (nothing logged ready: at 30M accounts the
    recovery takes minutes, the answer must not wait for it)."""
    for server in ("hypercorn", "uvicorn"):
        with socket.create_server(("127.0.0.1", 0)) as taken:
            port = taken.getsockname()[1]
            done = subprocess.run(
                [sys.executable, "-m", "core", "serve", "--dev", "--port", str(port),
                 "--data", str(tmp_path / server), "--access-log", "off", "--server", server],
                cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        assert done.returncode == 2, (server, done.stderr[-2000:])
        assert f"tally serve: cannot listen on 127.0.0.1:{port}:" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
        assert '"event":"ready"' not in done.stderr.replace(" ", ""), done.stderr[-2000:]


def test_the_directories_of_cores_no_longer_running_are_removed(tmp_path: Path) -> None:
    """A core killed with SIGKILL leaves its directory; the next one removes it, and
    leaves those of running cores and anything else alone."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(finished.stdout)
    stale = tmp_path / f"{RUN_DIR_PREFIX}{dead_pid}-abc"
    alive = tmp_path / f"{RUN_DIR_PREFIX}{os.getpid()}-def"
    unrelated = tmp_path / f"{RUN_DIR_PREFIX}notapid"
    for directory in (stale, alive, unrelated):
        directory.mkdir()
        (directory / "link.secret").write_text("x")
    assert remove_stale_run_dirs(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and alive.exists() and unrelated.exists()


def test_a_front_end_that_keeps_dying_waits_longer_each_time() -> None:
    assert restart_delay(0) == RESTART_DELAY_S
    assert [restart_delay(n) for n in (1, 2, 3)] == [
        2 * RESTART_DELAY_S,
        4 * RESTART_DELAY_S,
        8 * RESTART_DELAY_S,
    ]
    assert restart_delay(7) == restart_delay(1000) == RESTART_DELAY_MAX_S
