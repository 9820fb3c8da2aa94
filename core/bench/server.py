"""Tally server processes for the tools: start `python -m core serve` (or any command),
wait until it answers, stop it; and the CPU time of processes.

Shared by `tally bench http`, `tally bench pg`, the load-test runner and the
tests that drive a real server. It starts processes and polls one URL; it
knows nothing of the API (load tests speak to the wire through
`channels.client` only).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of these processes so far (threads included; gone: 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def children_of(pid: int) -> list[int]:
    """The child processes of `pid` (Linux: /proc/PID/task/*/children): the front-ends of
    a `tally serve --workers` core."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


class Server:
    """A server process started from `command` (cwd: the repository), ready once
    `ready_path` answers 200; its output goes to `log`."""

    def __init__(self, command: list[str], port: int, log: Path, ready_path: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        env = {name: value for name, value in os.environ.items() if name != "PYTHONOPTIMIZE"}
        with open(log, "ab") as output:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=output, stderr=output
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + ready_path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {READY_TIMEOUT_S} s")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
