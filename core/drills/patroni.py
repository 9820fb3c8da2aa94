"""The real deployment on one machine: three etcd members and three Patroni members.

Region A holds dc1 and dc2 (same city), region B holds dc3 (remote). Each DC
runs one etcd member (the DCS) and one Patroni member managing a PostgreSQL
15 server; everything listens on loopback, and each DC lives in its own
directory under the topology's directory:

    DIR/topology.json       ports and settings (what `status` and `down` read)
    DIR/pids.json           the pids of the etcd and Patroni processes
    DIR/dcN/etcd/           etcd's data directory       DIR/dcN/etcd.log
    DIR/dcN/patroni.yml     Patroni's configuration      DIR/dcN/patroni.log
    DIR/dcN/data/           PGDATA (Patroni's data_dir), the Unix socket in DIR/dcN

Replication (Patroni's dynamic configuration in etcd): `synchronous_mode`
and `synchronous_mode_strict`, so a COMMIT on the leader returns only once
a synchronous standby has its WAL on disk, and with no standby to take that
role writes block rather than run on one copy. dc3 is tagged `nofailover`:
Patroni never promotes it; an operator does (docs/ha.md). Which standby is
the synchronous one: Patroni 3.0.2 prefers members without `nofailover`
(`patroni/postgresql/sync.py`, `current_state`), so dc2 holds that role
whenever it streams; dc3 takes it only when dc2 cannot (dc2 down, or dc2
promoted). dc3 is therefore NOT tagged `nosync` by default: with `nosync`
on dc3, losing dc1 would leave the promoted dc2 without any possible
synchronous standby and strict mode would block every write until dc1
returned (`dc3_nosync=True` builds that variant; docs/ha.md).

Timing (docs/ha.md): `ttl` 10 s, `loop_wait` 2 s, `retry_timeout` 4 s
(loop_wait + 2 * retry_timeout <= ttl): a dead leader's key expires at most
10 s after its last renewal and dc2 notices within a loop.

As root, PostgreSQL refuses to run: etcd and Patroni (and so PostgreSQL)
run as `core.drills.pg_cluster.UNPRIVILEGED_USER`, set in the child before
exec (the pid recorded is the daemon's own, not a `runuser` wrapper's), in
a directory that user owns. The processes are detached (their own session):
they outlive the command that started them, so `tally cluster up`, `status`
and `down` work across invocations through pids.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from core.drills.pg_cluster import (
    SUPERUSER,
    UNPRIVILEGED_USER,
    Cluster,
    ClusterError,
    find_bin_directory,
)

SCOPE = "tally"
NAMESPACE = "/service/"
MEMBERS = ("dc1", "dc2", "dc3")
REGIONS = {"dc1": "A", "dc2": "A", "dc3": "B"}
PORT_BASE_DEFAULT = 25400
TTL_S = 10
LOOP_WAIT_S = 2
RETRY_TIMEOUT_S = 4
assert LOOP_WAIT_S + 2 * RETRY_TIMEOUT_S <= TTL_S
UP_TIMEOUT_S = 180.0
HTTP_TIMEOUT_S = 2.0
POLL_S = 0.2
PATRONI_BIN = "patroni"
PATRONICTL_BIN = "patronictl"
ETCD_BIN = "etcd"
POSTGRESQL_PARAMETERS = {
    "wal_level": "replica",
    "hot_standby": "on",
    "wal_log_hints": "on",  # pg_rewind (use_pg_rewind) needs hints or checksums
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_keep_size": "512MB",
    "max_connections": 100,
    "shared_buffers": "64MB",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "wal_writer_delay": "10ms",
}


class TopologyError(ClusterError):
    """The Patroni topology could not be started, reached or stopped."""


@dataclass(frozen=True)
class Member:
    """One DC: its etcd member and its Patroni member, and their loopback ports."""

    name: str
    index: int  # 1..3
    port_base: int
    host: str = "127.0.0.1"  # its address in its network namespace (`network="netns"`)

    @property
    def pg_port(self) -> int:
        return self.port_base + self.index

    @property
    def rest_port(self) -> int:
        return self.port_base + 10 + self.index

    @property
    def etcd_client_port(self) -> int:
        return self.port_base + 20 + self.index

    @property
    def etcd_peer_port(self) -> int:
        return self.port_base + 30 + self.index

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"


@dataclass
class Topology:
    """The three DCs of one cluster directory (module docstring)."""

    directory: str
    port_base: int = PORT_BASE_DEFAULT
    bin_directory: str = ""
    ttl_s: int = TTL_S
    loop_wait_s: int = LOOP_WAIT_S
    retry_timeout_s: int = RETRY_TIMEOUT_S
    dc3_nosync: bool = False
    # "loopback": every daemon on 127.0.0.1. "netns": each DC in its own network namespace
    # on a bridge (root only), so that one DC can be cut off (`partition`).
    network: str = "loopback"
    pids: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.directory = os.path.abspath(self.directory)
        if not self.bin_directory:
            found = find_bin_directory()
            if found is None:
                raise TopologyError("PostgreSQL binaries not found (initdb, pg_ctl)")
            self.bin_directory = found
        if self.loop_wait_s + 2 * self.retry_timeout_s > self.ttl_s:
            raise TopologyError(
                f"loop_wait ({self.loop_wait_s}) + 2 * retry_timeout ({self.retry_timeout_s})"
                f" must be <= ttl ({self.ttl_s})"
            )

    # --- where ---------------------------------------------------------------------

    def members(self) -> list[Member]:
        if self.network == "netns":
            subnet = self.subnet()
            return [
                Member(m.name, m.index, m.port_base, f"{subnet}.{10 + m.index}")
                for m in members_for(self.port_base)
            ]
        return members_for(self.port_base)

    def subnet(self) -> str:
        """The /24 of the namespaces' bridge (`network="netns"`), one per port base."""
        return f"10.231.{1 + (self.port_base // 40) % 250}"

    def member(self, name: str) -> Member:
        for member in self.members():
            if member.name == name:
                return member
        raise TopologyError(f"no member {name!r} (members: {', '.join(MEMBERS)})")

    def member_directory(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def postgresql(self, name: str) -> Cluster:
        """The member's PostgreSQL as a `Cluster` (its data directory, socket, pids)."""
        return Cluster(self.member_directory(name), self.bin_directory, self.member(name).pg_port)

    def dsn(self, database: str = "postgres") -> str:
        """libpq multi-host DSN: whichever member takes writes (the leader)."""
        hosts = ",".join(f"{m.host}:{m.pg_port}" for m in self.members())
        return f"postgresql://{SUPERUSER}@{hosts}/{database}?target_session_attrs=read-write"

    def member_dsn(self, name: str, database: str = "postgres") -> str:
        """One member only (reads, checks), whatever its role."""
        member = self.member(name)
        return f"postgresql://{SUPERUSER}@{member.host}:{member.pg_port}/{database}"

    def etcd_hosts(self) -> list[str]:
        return [f"{m.host}:{m.etcd_client_port}" for m in self.members()]

    # --- saved state ---------------------------------------------------------------

    def save(self) -> None:
        state = {k: v for k, v in asdict(self).items() if k != "pids"}
        _write_json(os.path.join(self.directory, "topology.json"), state)
        _write_json(os.path.join(self.directory, "pids.json"), self.pids)

    @classmethod
    def load(cls, directory: str) -> Topology:
        path = os.path.join(os.path.abspath(directory), "topology.json")
        try:
            with open(path, encoding="utf-8") as file:
                state = json.load(file)
        except FileNotFoundError:
            raise TopologyError(f"no cluster in {directory} (no topology.json)") from None
        topology = cls(**state)
        pids_path = os.path.join(topology.directory, "pids.json")
        with contextlib.suppress(FileNotFoundError), open(pids_path, encoding="utf-8") as file:
            topology.pids = {k: int(v) for k, v in json.load(file).items()}
        return topology

    # --- configuration files -------------------------------------------------------------

    def etcd_command(self, member: Member, new: bool) -> list[str]:
        cluster = ",".join(f"{m.name}=http://{m.host}:{m.etcd_peer_port}" for m in self.members())
        return [
            ETCD_BIN,
            "--name", member.name,
            "--data-dir", os.path.join(self.member_directory(member.name), "etcd"),
            "--listen-client-urls", f"http://{member.host}:{member.etcd_client_port}",
            "--advertise-client-urls", f"http://{member.host}:{member.etcd_client_port}",
            "--listen-peer-urls", f"http://{member.host}:{member.etcd_peer_port}",
            "--initial-advertise-peer-urls", f"http://{member.host}:{member.etcd_peer_port}",
            "--initial-cluster", cluster,
            "--initial-cluster-state", "new" if new else "existing",
            "--initial-cluster-token", f"tally-{self.port_base}",
            "--heartbeat-interval", "100",
            "--election-timeout", "1000",
        ]  # fmt: skip

    def patroni_config(self, member: Member) -> dict[str, Any]:
        directory = self.member_directory(member.name)
        hba = [
            "local all all trust",
            "local replication all trust",
            "host all all 127.0.0.1/32 trust",
            "host replication all 127.0.0.1/32 trust",
            f"host all all {self.subnet()}.0/24 trust",
            f"host replication all {self.subnet()}.0/24 trust",
        ]
        tags: dict[str, bool] = {
            "nofailover": member.name == "dc3",
            "noloadbalance": False,
            "clonefrom": False,
            "nosync": member.name == "dc3" and self.dc3_nosync,
        }
        return {
            "scope": SCOPE,
            "namespace": NAMESPACE,
            "name": member.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"{member.host}:{member.rest_port}",
                "connect_address": f"{member.host}:{member.rest_port}",
            },
            "etcd3": {"hosts": self.etcd_hosts()},
            "bootstrap": {
                "dcs": {
                    "ttl": self.ttl_s,
                    "loop_wait": self.loop_wait_s,
                    "retry_timeout": self.retry_timeout_s,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": True,
                    "synchronous_mode_strict": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": dict(POSTGRESQL_PARAMETERS),
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],
                "pg_hba": hba,
            },
            "postgresql": {
                "listen": f"{member.host}:{member.pg_port}",
                "connect_address": f"{member.host}:{member.pg_port}",
                "data_dir": os.path.join(directory, "data"),
                "bin_dir": self.bin_directory,
                "pgpass": os.path.join(directory, "pgpass"),
                "authentication": {
                    "superuser": {"username": SUPERUSER},
                    "replication": {"username": "replicator"},
                    "rewind": {"username": SUPERUSER},
                },
                "parameters": {"unix_socket_directories": directory},
                "pg_hba": hba,
            },
            "tags": tags,
        }

    def write_configs(self) -> None:
        for member in self.members():
            directory = self.member_directory(member.name)
            _make_private_directory(directory)
            path = os.path.join(directory, "patroni.yml")
            # JSON is YAML: no YAML writer needed.
            _write_json(path, self.patroni_config(member))
            _give_to_server_user(path)

    # --- processes -------------------------------------------------------------------

    def alive(self, key: str) -> bool:
        pid = self.pids.get(key)
        return pid is not None and process_alive(pid)

    def start_process(self, key: str, command: list[str], log_name: str, cwd: str) -> None:
        """Start a detached daemon as the server's user; its pid goes into pids.json."""
        log_path = os.path.join(cwd, log_name)
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": cwd,
            "LANG": "C.UTF-8",
            "ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", ""),
        }
        user: dict[str, Any] = {}
        if self.network == "netns":
            # `ip netns exec` and `setpriv` both exec: the pid is still the daemon's own.
            entry = pwd.getpwnam(UNPRIVILEGED_USER)
            command = [
                "ip", "netns", "exec", self.namespace(key.split("-")[-1]),
                "setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                "--clear-groups", "--", *command,
            ]  # fmt: skip
        elif os.geteuid() == 0:
            entry = pwd.getpwnam(UNPRIVILEGED_USER)
            user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        with open(log_path, "ab") as log:
            try:
                process = subprocess.Popen(
                    command,
                    cwd=cwd,
                    env=environment,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    **user,
                )
            except OSError as error:
                raise TopologyError(f"cannot start {command[0]}: {error}") from error
        _started_here[process.pid] = process
        self.pids[key] = process.pid
        self.save()

    def start_etcd(self, member: Member, new: bool) -> None:
        directory = self.member_directory(member.name)
        self.start_process(
            f"etcd-{member.name}", self.etcd_command(member, new), "etcd.log", directory
        )

    def start_patroni(self, member: Member) -> None:
        directory = self.member_directory(member.name)
        config = os.path.join(directory, "patroni.yml")
        self.start_process(
            f"patroni-{member.name}", [PATRONI_BIN, config], "patroni.log", directory
        )

    def kill(self, key: str) -> int | None:
        """SIGKILL one recorded daemon (etcd-dcN, patroni-dcN) and wait until it is gone."""
        pid = self.pids.get(key)
        if pid is None or not process_alive(pid):
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        return pid

    def kill_dc(self, name: str, *, etcd: bool = True) -> dict[str, int | None]:
        """A DC dies at once: its Patroni, its PostgreSQL (postmaster and backends) and,
        unless `etcd` is False, its etcd member, all SIGKILLed."""
        killed: dict[str, int | None] = {"patroni": self.kill(f"patroni-{name}")}
        killed["postgresql"] = self.postgresql(name).kill()
        if etcd:
            killed["etcd"] = self.kill(f"etcd-{name}")
        return killed

    def stop_process(self, key: str, timeout_s: float = 30.0) -> None:
        pid = self.pids.get(key)
        if pid is None or not process_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, timeout_s):
            self.kill(key)

    # --- network namespaces (network="netns") -------------------------------------------

    def namespace(self, name: str) -> str:
        return f"tally-{self.port_base}-{name}"

    def _bridge(self) -> str:
        return f"tb{self.port_base}"

    def _veth(self, name: str) -> str:
        return f"tv{self.port_base}{name[-1]}"  # the root side; `tp...` inside

    def setup_network(self) -> None:
        """A bridge in the root namespace (the drill's address: .1) and one namespace per DC
        on it through a veth pair, the DC's address inside. Layer 2 only: no forwarding
        or firewall setting of the machine is changed."""
        if os.geteuid() != 0:
            raise TopologyError("network namespaces need root")
        bridge = self._bridge()
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{self.subnet()}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for member in self.members():
            namespace, veth = self.namespace(member.name), self._veth(member.name)
            peer = "tp" + veth[2:]
            _ip("netns", "add", namespace)
            _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", namespace)
            _ip("link", "set", veth, "master", bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", namespace, "addr", "add", f"{member.host}/24", "dev", peer)
            _ip("-n", namespace, "link", "set", peer, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def teardown_network(self) -> None:
        for member in self.members():
            with contextlib.suppress(TopologyError):
                _ip("netns", "delete", self.namespace(member.name))
        with contextlib.suppress(TopologyError):
            _ip("link", "delete", self._bridge())

    def partition(self, name: str) -> None:
        """Cut DC `name` off from the others and from the root namespace (its veth down)."""
        _ip("link", "set", self._veth(name), "down")

    def heal(self, name: str) -> None:
        _ip("link", "set", self._veth(name), "up")

    # --- the REST API ------------------------------------------------------------------

    def rest(self, name: str, path: str, method: str = "GET", body: Any = None) -> Any:
        """One Patroni REST call; the decoded JSON (or text) answer, or raise TopologyError."""
        url = self.member(name).rest_url + path
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as answer:
                text = answer.read().decode()
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            if method == "GET" and text.startswith("{"):
                return json.loads(text)  # /primary answers 503 with the member's state
            raise TopologyError(f"{method} {url}: {error.code} {text.strip()}") from error
        except (OSError, urllib.error.URLError) as error:
            raise TopologyError(f"{method} {url}: {error}") from error
        return json.loads(text) if text.startswith("{") else text

    def cluster_view(self) -> dict[str, Any] | None:
        """Patroni's `/cluster` from the first member that answers (None: none does)."""
        for member in self.members():
            with contextlib.suppress(TopologyError):
                view = self.rest(member.name, "/cluster")
                if isinstance(view, dict):
                    return view
        return None

    def roles(self) -> dict[str, str]:
        """member -> role (leader, sync_standby, replica), from `/cluster`."""
        view = self.cluster_view() or {}
        return {m["name"]: m.get("role", "") for m in view.get("members", [])}

    def status(self) -> dict[str, Any]:
        """Members, roles, states, lag and timeline, and each daemon's pid and liveness."""
        view = self.cluster_view()
        members: dict[str, dict[str, Any]] = {}
        for entry in (view or {}).get("members", []):
            members[entry["name"]] = {
                "role": entry.get("role"),
                "state": entry.get("state"),
                "timeline": entry.get("timeline"),
                "lag": entry.get("lag", 0 if entry.get("role") == "leader" else None),
                "tags": entry.get("tags", {}),
            }
        for member in self.members():
            info = members.setdefault(member.name, {"role": None, "state": "unreachable"})
            info.update(
                {
                    "region": REGIONS[member.name],
                    "pg": f"{member.host}:{member.pg_port}",
                    "rest": member.rest_url,
                    "etcd": f"{member.host}:{member.etcd_client_port}",
                    "patroni_pid": self.pids.get(f"patroni-{member.name}"),
                    "patroni_alive": self.alive(f"patroni-{member.name}"),
                    "etcd_pid": self.pids.get(f"etcd-{member.name}"),
                    "etcd_alive": self.alive(f"etcd-{member.name}"),
                    "postmaster_pid": self.postgresql(member.name).postmaster_pid(),
                }
            )
        return {
            "directory": self.directory,
            "dsn": self.dsn(),
            "settings": self.settings(),
            "members": members,
        }

    def settings(self) -> dict[str, Any]:
        return {
            "ttl": self.ttl_s,
            "loop_wait": self.loop_wait_s,
            "retry_timeout": self.retry_timeout_s,
            "synchronous_mode": True,
            "synchronous_mode_strict": True,
            "use_pg_rewind": True,
            "dc3_tags": {"nofailover": True, "nosync": self.dc3_nosync},
        }

    def wait_healthy(
        self, timeout_s: float = UP_TIMEOUT_S, leader: str | None = None, sync: str | None = None
    ) -> dict[str, str]:
        """Until a running leader, a streaming synchronous standby and a streaming dc3
        (every live member running); `leader`/`sync` name the members expected."""
        deadline = time.monotonic() + timeout_s
        roles: dict[str, str] = {}
        while time.monotonic() < deadline:
            view = self.cluster_view()
            if view is not None:
                members = view.get("members", [])
                roles = {m["name"]: m.get("role", "") for m in members}
                running = {m["name"] for m in members if m.get("state") in ("running", "streaming")}
                leaders = [n for n, r in roles.items() if r == "leader" and n in running]
                syncs = [n for n, r in roles.items() if r == "sync_standby" and n in running]
                if (
                    leaders
                    and syncs
                    and (leader is None or leaders == [leader])
                    and (sync is None or syncs == [sync])
                    and all(n in running for n in roles)
                ):
                    return roles
            time.sleep(POLL_S)
        raise TopologyError(
            f"the cluster in {self.directory} was not healthy within {timeout_s} s"
            f" (roles: {roles}); see {self.directory}/dc*/patroni.log"
        )

    def wait_leader(self, name: str, timeout_s: float = 120.0) -> float:
        """Until `name` is the running leader (its REST /primary answers 200); the time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(TopologyError):
                answer = self.rest(name, "/cluster")
                for entry in answer.get("members", []):
                    if (entry["name"], entry.get("role"), entry.get("state")) == (
                        name,
                        "leader",
                        "running",
                    ):
                        return time.monotonic()
            time.sleep(0.05)
        raise TopologyError(f"{name} did not become the leader within {timeout_s} s")

    def patronictl(self, *arguments: str, timeout_s: float = 60.0) -> str:
        config = os.path.join(self.member_directory("dc3"), "patroni.yml")
        command = [PATRONICTL_BIN, "-c", config, *arguments]
        try:
            completed = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, check=False,
                env={**os.environ, "HOME": self.directory},
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as error:
            raise TopologyError(f"{' '.join(command)}: {error}") from error
        if completed.returncode != 0:
            raise TopologyError(
                f"{' '.join(command)} exited {completed.returncode}: {completed.stderr.strip()}"
            )
        return completed.stdout


_started_here: dict[int, subprocess.Popen[bytes]] = {}


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie of ours is reaped and counts as gone)."""
    process = _started_here.get(pid)
    if process is not None:
        return process.poll() is None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            state = file.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.01)
    return False


def _ip(*arguments: str) -> None:
    command = ["ip", *arguments]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        raise TopologyError(f"{' '.join(command)}: {error}") from error
    if completed.returncode != 0:
        raise TopologyError(f"{' '.join(command)}: {completed.stderr.strip()}")


def _write_json(path: str, value: Any) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(value, file, indent=2)
        file.write("\n")
    os.replace(temporary, path)


def _give_to_server_user(path: str) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _make_private_directory(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    _give_to_server_user(path)


def ports_free(port_base: int) -> bool:
    """Whether every port the topology would listen on is free on 127.0.0.1."""
    for member in members_for(port_base):
        for port in (member.pg_port, member.rest_port, member.etcd_client_port,
                     member.etcd_peer_port):  # fmt: skip
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    return False
    return True


def members_for(port_base: int) -> list[Member]:
    return [Member(name, index + 1, port_base) for index, name in enumerate(MEMBERS)]


def up(
    directory: str,
    port_base: int = PORT_BASE_DEFAULT,
    timeout_s: float = UP_TIMEOUT_S,
    **settings: Any,
) -> Topology:
    """Start (or restart) the topology in `directory` and wait until it is healthy."""
    existing = os.path.exists(os.path.join(directory, "topology.json"))
    if existing:
        topology = Topology.load(directory)
    else:
        if not ports_free(port_base):
            raise TopologyError(
                f"a port in {port_base + 1}..{port_base + 33} is in use: choose --port-base"
            )
        os.makedirs(directory, exist_ok=True)
        topology = Topology(directory, port_base, **settings)
        if topology.network == "netns":
            try:
                topology.setup_network()
            except TopologyError:
                topology.teardown_network()
                raise
        _give_to_server_user(topology.directory)
        os.chmod(topology.directory, 0o755)
        topology.write_configs()
        topology.save()
    try:
        for member in topology.members():
            if not topology.alive(f"etcd-{member.name}"):
                new = not os.path.isdir(
                    os.path.join(topology.member_directory(member.name), "etcd", "member")
                )
                topology.start_etcd(member, new)
        wait_etcd(topology, timeout_s)
        for member in topology.members():
            if not topology.alive(f"patroni-{member.name}"):
                topology.start_patroni(member)
                if not existing and member.name == "dc1":
                    # dc1 bootstraps (initdb) first, so it is the first leader.
                    topology.wait_leader("dc1", timeout_s)
        topology.wait_healthy(timeout_s, sync=None if existing else "dc2")
    except BaseException:
        if not existing:
            down(topology, remove=False)
        raise
    return topology


def wait_etcd(topology: Topology, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        healthy = 0
        for member in topology.members():
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                url = f"http://{member.host}:{member.etcd_client_port}/health"
                with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as answer:
                    if json.loads(answer.read()).get("health") == "true":
                        healthy += 1
        if healthy >= 2:
            return
        time.sleep(POLL_S)
    raise TopologyError(
        f"etcd had no quorum within {timeout_s} s; see {topology.directory}/dc*/etcd.log"
    )


def down(topology: Topology, remove: bool = False) -> None:
    """Stop Patroni (which stops PostgreSQL), then etcd; with `remove`, delete the directory."""
    for member in topology.members():
        topology.stop_process(f"patroni-{member.name}")
    for member in topology.members():
        topology.postgresql(member.name).stop("fast")  # one whose Patroni died
    for member in topology.members():
        topology.stop_process(f"etcd-{member.name}")
    if topology.network == "netns" and remove:
        topology.teardown_network()
    if remove:
        shutil.rmtree(topology.directory, ignore_errors=True)
    else:
        topology.pids = {}
        topology.save()


@contextlib.contextmanager
def open_topology(directory: str, port_base: int, **settings: Any) -> Iterator[Topology]:
    """A started topology, stopped and removed on exit (even on failure)."""
    topology = up(directory, port_base, **settings)
    try:
        yield topology
    finally:
        down(topology, remove=True)


def free_port_base(start: int = 30000, end: int = 60000, step: int = 40) -> int:
    """A port base whose 12 ports are free now (tests and drills beside a running cluster)."""
    base = start + (os.getpid() * step) % (end - start)
    for _ in range((end - start) // step):
        if ports_free(base):
            return base
        base = start + (base - start + step) % (end - start)
    raise TopologyError("no free port range for a Patroni topology")


def leader_of(roles: Mapping[str, str]) -> str | None:
    leaders = [name for name, role in roles.items() if role == "leader"]
    return leaders[0] if leaders else None
