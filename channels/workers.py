"""`tally serve --workers N`: N front-end processes beside this core, on one machine.

The core process binds the public listening socket once and starts N `tally gateway`
processes that inherit it (`--fd`): each accepts connections on it, checks and parses
the requests and forwards them to the core over the core link on a Unix socket in a
private directory (mode 0700, the link's secret beside it, mode 0600). The core keeps
its own HTTP app on a Unix socket there too: it answers the requests the front-ends
pass through whole.

A front-end that dies (a crash, kill -9) is started again after `RESTART_DELAY_S`; the
others keep accepting meanwhile, so its clients' retries land on them. The front-ends
stop with the core (SIGTERM, then SIGKILL after `STOP_TIMEOUT_S`).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

logger = logging.getLogger("tally.serve")
RESTART_DELAY_S = 0.5
STOP_TIMEOUT_S = 10.0
WORKERS_MAX = 64


class Workers:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.count = args.workers
        # Unix socket paths are short (108 bytes): a private directory under /tmp.
        self.run_dir = Path(tempfile.mkdtemp(prefix="tally-core-"))
        os.chmod(self.run_dir, 0o700)
        self.link_path = str(self.run_dir / "link.sock")
        self.http_path = str(self.run_dir / "http.sock")
        self.secret_file = self.run_dir / "link.secret"
        self.secret = secrets.token_urlsafe(32).encode()
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(self.secret)
        self.listener: socket.socket | None = None
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * self.count
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind the public socket, start the front-ends and their supervisor."""
        args = self.args
        self.listener = socket.create_server((args.host, args.port), backlog=1024)
        self.listener.set_inheritable(True)
        for index in range(self.count):
            self.processes[index] = self._spawn(index)
        self._thread = threading.Thread(target=self._supervise, name="workers", daemon=True)
        self._thread.start()

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        args = self.args
        assert self.listener is not None
        fd = self.listener.fileno()
        command = [
            sys.executable, "-m", "core", "gateway",
            "--core", f"unix:{self.link_path}",
            "--link-secret-file", str(self.secret_file),
            "--fd", str(fd),
            "--server", args.server,
            "--rules", args.rules,
            "--name", f"worker-{index}",
            *(["--loop", args.loop] if args.loop else []),
            *(["--certfile", args.certfile, "--keyfile", args.keyfile] if args.certfile else []),
        ]  # fmt: skip
        process = subprocess.Popen(command, pass_fds=(fd,))
        logger.info(_event("worker_started", worker=index, pid=process.pid))
        return process

    def _supervise(self) -> None:
        while not self._stopping.wait(0.2):
            for index, process in enumerate(self.processes):
                if process is None or process.poll() is None:
                    continue
                logger.warning(
                    _event("worker_exited", worker=index, pid=process.pid, code=process.returncode)
                )
                if self._stopping.wait(RESTART_DELAY_S):
                    return
                self.restarts += 1
                self.processes[index] = self._spawn(index)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        running = [process for process in self.processes if process is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.listener is not None:
            self.listener.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _event(name: str, **fields: object) -> str:
    return orjson.dumps({"event": name, **fields}).decode()
