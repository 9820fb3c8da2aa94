"""`tally serve --workers N`: N front-end processes beside this core, on one machine.

The core process binds the public listening socket once and starts N `tally gateway`
processes that inherit it (`--fd`): each accepts connections on it, checks and parses
the requests and forwards them to the core over the core link on a Unix socket in a
private directory (mode 0700, the link's secret beside it, mode 0600). The core keeps
its own HTTP app on a Unix socket there too: it answers the requests the front-ends
pass through whole. With `--iso8583 HOST:PORT` the core binds the terminals' socket too
and every front-end accepts terminals on it (`--iso8583-fd`), running the ISO 8583
adapter and calling the core's services over the link.

A front-end that dies (a crash, kill -9) is started again after `RESTART_DELAY_S`; the
others keep accepting meanwhile, so its clients' retries land on them. One that keeps
dying soon after its start (within `STEADY_S`: a broken installation, a bad
certificate) waits twice as long each time, up to `RESTART_DELAY_MAX_S`, and each exit
is logged with the delay. The front-ends stop with the core (SIGTERM, then SIGKILL
after `STOP_TIMEOUT_S`).

The private directory is named after the core's pid: a core killed with SIGKILL
cannot remove it, so the next `--workers` core removes those of cores no longer running.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
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
RESTART_DELAY_MAX_S = 30.0
STEADY_S = 10.0  # a front-end that ran this long before it exited was not crash-looping
STOP_TIMEOUT_S = 10.0
WORKERS_MAX = 64
RUN_DIR_PREFIX = "tally-core-"
_RUN_DIR_RE = re.compile(re.escape(RUN_DIR_PREFIX) + r"([0-9]+)-")


def restart_delay(quick_exits: int) -> float:
    """How long a front-end that exited waits before it is started again, after
    `quick_exits` exits in a row each within `STEADY_S` of its start."""
    return min(RESTART_DELAY_S * (1 << min(quick_exits, 16)), RESTART_DELAY_MAX_S)


def remove_stale_run_dirs(parent: str | None = None) -> list[str]:
    """Remove the private directories (socket, secret) of `--workers` cores that are no
    longer running (killed with SIGKILL, they could not); those of running cores and of
    other users stay. The paths removed."""
    parent = parent or tempfile.gettempdir()
    removed = []
    for name in os.listdir(parent):
        match = _RUN_DIR_RE.match(name)
        path = os.path.join(parent, name)
        if match is None or not os.path.isdir(path) or os.stat(path).st_uid != os.getuid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except (PermissionError, OverflowError):
            continue  # alive (another user's), or no pid at all
    return removed


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP listening socket on `host`:`port`, bound (IPv6 for a host with a colon): the
    public one of `tally serve`, with or without front-ends, and the terminals' one.
    An `OSError` names the address (`filename`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as error:
        raise OSError(error.errno, error.strerror or str(error), f"{host}:{port}") from None


class Workers:
    def __init__(self, args: argparse.Namespace, iso8583: tuple[str, int] | None = None) -> None:
        """`iso8583`: the terminals' address (`--iso8583`): bound here too, and each
        front-end runs the ISO 8583 listener on it beside HTTP (with `--terminals` and
        `--iso8583-keys`), calling the services here over the core link."""
        self.args = args
        self.iso8583 = iso8583
        self.count = args.workers
        # Unix socket paths are short (108 bytes): a private directory under /tmp.
        for path in remove_stale_run_dirs():
            logger.info(_event("workers_stale_directory_removed", path=path))
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))
        os.chmod(self.run_dir, 0o700)
        self.link_path = str(self.run_dir / "link.sock")
        self.http_path = str(self.run_dir / "http.sock")
        self.secret_file = self.run_dir / "link.secret"
        self.secret = secrets.token_urlsafe(32).encode()
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(self.secret)
        self.listener: socket.socket | None = None
        self.iso8583_listener: socket.socket | None = None
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * self.count
        self.started_at = [0.0] * self.count  # time.monotonic() of each one's last start
        self.quick_exits = [0] * self.count  # exits in a row, each within STEADY_S
        self.restart_at: list[float | None] = [None] * self.count  # when exited, due again
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind the public socket, start the front-ends and their supervisor. `OSError`
        if the address cannot be bound (nothing is started: call `stop`)."""
        args = self.args
        self.listener = listening_socket(args.host, args.port)
        self.listener.set_inheritable(True)
        if self.iso8583 is not None:
            self.iso8583_listener = listening_socket(*self.iso8583)
            self.iso8583_listener.set_inheritable(True)
        for index in range(self.count):
            self.processes[index] = self._spawn(index)
        self._thread = threading.Thread(target=self._supervise, name="workers", daemon=True)
        self._thread.start()

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        args = self.args
        assert self.listener is not None
        fd = self.listener.fileno()
        fds = [fd]
        iso8583: list[str] = []
        if self.iso8583_listener is not None:
            fds.append(self.iso8583_listener.fileno())
            iso8583 = ["--iso8583-fd", str(fds[-1]), "--terminals", args.terminals,
                       "--iso8583-keys", args.iso8583_keys]  # fmt: skip
            if args.dev:  # the core accepted public development keys: so may they
                iso8583.append("--dev")
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
            *iso8583,
        ]  # fmt: skip
        process = subprocess.Popen(command, pass_fds=tuple(fds))
        self.started_at[index] = time.monotonic()
        logger.info(_event("worker_started", worker=index, pid=process.pid))
        return process

    def _supervise(self) -> None:
        """Start again each front-end that exited, when its delay is over; the others
        are not held up by it."""
        while not self._stopping.wait(0.2):
            now = time.monotonic()
            for index, process in enumerate(self.processes):
                due = self.restart_at[index]
                if due is not None:
                    if now >= due:
                        self.restart_at[index] = None
                        self.restarts += 1
                        self.processes[index] = self._spawn(index)
                    continue
                if process is None or process.poll() is None:
                    continue
                lived_s = now - self.started_at[index]
                quick = self.quick_exits[index] + 1 if lived_s < STEADY_S else 0
                self.quick_exits[index] = quick
                delay_s = restart_delay(quick)
                self.restart_at[index] = now + delay_s
                logger.warning(
                    _event("worker_exited", worker=index, pid=process.pid, code=process.returncode,
                           lived_s=round(lived_s, 3), restart_in_s=delay_s)
                )  # fmt: skip

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
        for listener in (self.listener, self.iso8583_listener):
            if listener is not None:
                listener.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _event(name: str, **fields: object) -> str:
    return orjson.dumps({"event": name, **fields}).decode()
