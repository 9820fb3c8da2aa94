"""Throwaway PostgreSQL clusters on Unix sockets: for tests, `tally bench pg` and the drill.

A cluster lives in one directory of its own: `data/` (PGDATA), `postgres.log`,
and the server's Unix socket (`.s.PGSQL.<port>`) in the directory itself,
with TCP switched off (`listen_addresses = ''`). Two clusters in two
directories can therefore never collide, whatever port number they use.

PostgreSQL refuses to run as root. As root (CI), `initdb`, `pg_ctl` and
`pg_basebackup` run under the unprivileged user `nobody` via `runuser`, and
the directory is created under /tmp (not under pytest's 0700 tmp dirs, which
`nobody` cannot traverse) and owned by that user. The test process, as root,
still reaches the socket. As a normal user the binaries run directly.

The binaries come from PATH or `/usr/lib/postgresql/<newest>/bin`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from core.errors import TallyError

UNPRIVILEGED_USER = "nobody"
PORT_DEFAULT = 5432
SUPERUSER = "postgres"
START_TIMEOUT_S = 60.0


class ClusterError(TallyError):
    """A throwaway cluster could not be created, started or stopped."""


def find_bin_directory() -> str | None:
    """Where `initdb` and `pg_ctl` are, or None when PostgreSQL is not installed."""
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return os.path.dirname(os.path.realpath(initdb))
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(path.split("/")[-3]) if path.split("/")[-3].isdigit() else 0,
    )
    return os.path.dirname(candidates[-1]) if candidates else None


def _as_root() -> bool:
    return os.geteuid() == 0


@dataclass
class Cluster:
    """One PostgreSQL cluster in `directory` (see the module docstring)."""

    directory: str
    bin_directory: str
    port: int = PORT_DEFAULT
    settings: dict[str, str] = field(default_factory=dict)
    log_path: str = ""

    def __post_init__(self) -> None:
        self.log_path = os.path.join(self.directory, "postgres.log")

    # --- where -----------------------------------------------------------------

    @property
    def data_directory(self) -> str:
        return os.path.join(self.directory, "data")

    @property
    def socket_directory(self) -> str:
        return self.directory

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.directory}&port={self.port}"

    def connect_kwargs(self, database: str = "postgres") -> dict[str, object]:
        return {"host": self.directory, "port": self.port, "user": SUPERUSER, "database": database}

    # --- running the binaries ------------------------------------------------------

    def _command(self, program: str, *arguments: str) -> list[str]:
        command = [os.path.join(self.bin_directory, program), *arguments]
        if _as_root():
            return ["runuser", "-u", UNPRIVILEGED_USER, "--", *command]
        return command

    def _run(self, program: str, *arguments: str, timeout_s: float = START_TIMEOUT_S) -> str:
        command = self._command(program, *arguments)
        try:
            completed = subprocess.run(
                command,
                cwd=self.directory,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise ClusterError(f"{' '.join(command)} failed: {error}") from error
        if completed.returncode != 0:
            raise ClusterError(
                f"{' '.join(command)} exited with {completed.returncode}:"
                f" {completed.stderr.strip()[-2000:]}{self._log_tail()}"
            )
        return completed.stdout

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as file:
                return "\n--- postgres.log ---\n" + file.read()[-2000:]
        except OSError:
            return ""

    # --- life cycle ------------------------------------------------------------------

    def initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            self.data_directory,
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        self.write_settings(self.settings)

    def write_settings(self, settings: Mapping[str, str]) -> None:
        """Append settings to postgresql.conf (the last occurrence of a name wins)."""
        base = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.directory}'",
            "port": str(self.port),
        }
        lines = [f"{name} = {value}" for name, value in {**base, **settings}.items()]
        path = os.path.join(self.data_directory, "postgresql.conf")
        with open(path, "a", encoding="utf-8") as file:
            file.write("\n# tally throwaway cluster\n" + "\n".join(lines) + "\n")

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        self._run(
            "pg_ctl",
            "-D",
            self.data_directory,
            "-l",
            self.log_path,
            "-w",
            "-t",
            str(int(timeout_s)),
            "start",
            timeout_s=timeout_s + 5,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs (`fast`, or `immediate` for a crash-like stop)."""
        if self.postmaster_pid() is None:
            return
        with contextlib.suppress(ClusterError):
            self._run("pg_ctl", "-D", self.data_directory, "-m", mode, "-w", "stop")
        if self.postmaster_pid() is not None:
            self.kill()

    def promote(self) -> None:
        self._run("pg_ctl", "-D", self.data_directory, "-w", "promote")

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid (None when none runs)."""
        try:
            with open(os.path.join(self.data_directory, "postmaster.pid"), encoding="ascii") as f:
                pid = int(f.readline().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def server_pids(self) -> list[int]:
        """The postmaster and every process it started (backends, walwriter, ...)."""
        postmaster = self.postmaster_pid()
        if postmaster is None:
            return []
        pids = [postmaster]
        for path in glob.glob("/proc/[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(path, encoding="ascii", errors="replace") as file:
                    fields = file.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == postmaster:
                    pids.append(int(path.split("/")[2]))
        return pids

    def kill(self, *, children: bool = True) -> int | None:
        """SIGKILL the postmaster (and, by default, its children: a machine that dies).

        Returns the postmaster's pid. Waits until every killed process is gone,
        so the cluster can be started again at once (crash recovery).
        """
        pids = self.server_pids() if children else [p for p in [self.postmaster_pid()] if p]
        if not pids:
            return None
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        for pid in pids:
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.01)
        if children:
            # Orphans of the postmaster exit on their own when it dies; wait for them too.
            while time.monotonic() < deadline and self._orphans():
                time.sleep(0.05)
        return pids[0]

    def _orphans(self) -> list[int]:
        """Server processes still attached to this data directory (by command line)."""
        found = []
        for path in glob.glob("/proc/[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                with open(path, "rb") as file:
                    command = file.read()
                if self.data_directory.encode() in command and b"postgres" in command:
                    found.append(int(path.split("/")[2]))
        return found

    def base_backup_from(self, primary: Cluster, application_name: str) -> None:
        """Make this (empty) cluster a streaming standby of `primary` (pg_basebackup -R)."""
        self._run(
            "pg_basebackup",
            "-D",
            self.data_directory,
            "-h",
            primary.directory,
            "-p",
            str(primary.port),
            "-U",
            SUPERUSER,
            "-X",
            "stream",
            "-R",
            "--no-sync",
            "-d",
            f"host={primary.directory} port={primary.port} user={SUPERUSER}"
            f" application_name={application_name}",
        )
        self.write_settings(self.settings)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


def new_directory(name: str) -> str:
    """A fresh directory under /tmp that the server's user owns (mode 0700)."""
    directory = tempfile.mkdtemp(prefix=f"tally-pg-{name}-", dir="/tmp")
    if _as_root():
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    return directory


def create_cluster(name: str, settings: Mapping[str, str] | None = None) -> Cluster:
    """initdb a new cluster (not started) in a fresh directory."""
    bin_directory = find_bin_directory()
    if bin_directory is None:
        raise ClusterError(
            "PostgreSQL binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin"
        )
    cluster = Cluster(new_directory(name), bin_directory, settings=dict(settings or {}))
    try:
        cluster.initdb()
    except BaseException:
        shutil.rmtree(cluster.directory, ignore_errors=True)
        raise
    return cluster


def create_standby(
    name: str, primary: Cluster, settings: Mapping[str, str] | None = None
) -> Cluster:
    """A standby of `primary` in a fresh directory (not started)."""
    bin_directory = find_bin_directory()
    assert bin_directory is not None
    cluster = Cluster(new_directory(name), bin_directory, settings=dict(settings or {}))
    try:
        cluster.base_backup_from(primary, name)
    except BaseException:
        shutil.rmtree(cluster.directory, ignore_errors=True)
        raise
    return cluster


DURABLE_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "'256MB'",
    "max_wal_size": "'2GB'",
    # A group's transaction writes ~5 MB of WAL: room for it so the backend does not
    # write WAL pages out itself mid-COPY (the default is 1/32 of shared_buffers).
    "wal_buffers": "'64MB'",
    "checkpoint_timeout": "'15min'",
    # The WAL writer flushes as a group's COPYs go, so its COMMIT waits for little
    # (measured: the commit phase of `tally bench pg` halves); every COMMIT still waits
    # for its WAL to be on disk.
    "wal_writer_delay": "'10ms'",
    "wal_writer_flush_after": "'256kB'",
    "wal_level": "replica",
    "max_connections": "100",
}

TEST_SETTINGS = {
    # Tests run many short clusters on a shared machine: durability is not what they test
    # except where a test sets fsync itself (the crash tests keep it on).
    "shared_buffers": "'32MB'",
    "max_connections": "60",
    "wal_level": "replica",
}


@contextlib.contextmanager
def open_cluster(name: str, settings: Mapping[str, str] | None = None) -> Iterator[Cluster]:
    """A started throwaway cluster, stopped and removed on exit (even on failure)."""
    cluster = create_cluster(name, settings)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
