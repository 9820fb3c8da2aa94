"""Storage, tried as an attacker (or bad luck) would: a full disk, a crash, a growing
journal, a data directory others can read. Each test runs a real `tally serve`.

- A disk that fills up (a real tmpfs, filled with a ballast file) turns writes into
  503 storage-unavailable with Retry-After and /readyz into 503 with the reason;
  once the ballast is gone the server is ready again by itself, takes writes, and
  nothing acknowledged was lost or applied twice.
- Requests captured before a kill -9 cannot be replayed after the restart.
- Nonces are written as one record per group, not one per request.
- The data directory is 0700 and its files 0600, and a wider one is tightened.
- PostgreSQL: a store that refuses writes (read-only) gives the same 503, /readyz
  reason and self-recovery.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from channels.client import Signer, TallyClient
from core.entries import EntryKind, decode_state_changes
from core.journal import JournalScan
from tests.http_helpers import (
    TELLER,
    TallyServer,
    balance,
    channel_secret,
    key,
    open_class_i,
    problem_type,
    register,
)

TMPFS_SIZE = "4m"
SEGMENT_KB = "128"  # small segments: the disk fills up at a rotation within ~400 writes
WRITES_MAX = 5000


def signer(channel: str) -> Signer:
    key_id, secret = channel_secret(channel)
    return Signer(channel, key_id, secret.encode())


@contextlib.contextmanager
def tmpfs(directory: Path) -> Iterator[Path]:
    """A real small filesystem that can really fill up. Root is needed to mount it (CI
    runs as root); elsewhere the test is skipped, saying so."""
    directory.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (a disk that really fills up) needs root; CI is root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"this machine cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(path: Path) -> int:
    """Write `path` until the filesystem refuses (ENOSPC); the bytes written."""
    chunk = b"\xa5" * (64 << 10)
    written = 0
    with open(path, "wb", buffering=0) as ballast:
        while True:
            try:
                written += ballast.write(chunk)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                break
    with open(path, "ab", buffering=0) as ballast:  # the last partial page, byte-wise
        for size in (4096, 512, 1):
            while True:
                try:
                    written += ballast.write(b"\xa5" * size)
                except OSError:
                    break
    return written


def deposit(
    client: TallyClient, account: str, amount_minor: int, idempotency_key: str
) -> httpx.Response:
    return client.post(
        f"/v1/accounts/{account}/cash-deposits",
        {"amount_minor": amount_minor},
        idempotency_key=idempotency_key,
    )


def readyz(server: TallyServer) -> httpx.Response:
    return httpx.get(server.url + "/readyz", timeout=5)


def test_full_disk_answers_503_and_recovers_by_itself(tmp_path: Path) -> None:
    """Fill the real disk under the journal: the write that meets it (a new segment does
    not fit) and every write after it answer 503 storage-unavailable with Retry-After,
    /readyz answers 503 naming ENOSPC while /healthz stays up; after the ballast is
    removed the server becomes ready WITHOUT a restart, the refused write retried with
    its Idempotency-Key and a new one both land, and the balance is exactly the sum of
    what was acknowledged (nothing lost, nothing applied twice), also after kill -9.
    The access log lives on the same full disk and must not bring the server down."""
    with tmpfs(tmp_path / "disk") as disk:
        # The data directory is the filesystem itself, and the access log is on it too (as
        # /var/lib/tally and /var/log often share one): a log that cannot be written must
        # not take the server down. The server's own stderr log stays outside, to read.
        server = TallyServer(
            disk,
            extra=[
                "--journal-segment-kb",
                SEGMENT_KB,
                "--access-log",
                str(disk / "access.jsonl"),
            ],
        ).start()
        try:
            with server.client("counter") as counter:
                account = open_class_i(counter, register(counter))
                acknowledged = 0
                assert deposit(counter, account, 100, key()).status_code == 201
                acknowledged += 100
                ballast = disk / "ballast"
                assert fill(ballast) > 0
                refused_key = ""
                for _ in range(WRITES_MAX):
                    refused_key = key()
                    response = deposit(counter, account, 1, refused_key)
                    if response.status_code != 201:
                        break
                    acknowledged += 1
                assert response.status_code == 503, response.text
                assert problem_type(response) == "storage-unavailable", response.text
                assert int(response.headers["retry-after"]) >= 1
                ready = readyz(server)
                assert ready.status_code == 503, ready.text
                assert "No space left on device" in ready.json()["error"], ready.text
                assert httpx.get(server.url + "/healthz").status_code == 200
                again = deposit(counter, account, 1, key())
                assert again.status_code == 503 and again.headers["retry-after"], again.text
                assert problem_type(again) == "storage-unavailable"
                assert readyz(server).status_code == 503  # stays down while the disk is full

                ballast.unlink()
                server.wait_ready(timeout_s=60)
                retried = deposit(counter, account, 1, refused_key)
                assert retried.status_code == 201, retried.text
                acknowledged += 1
                fresh = deposit(counter, account, 7, key())
                assert fresh.status_code == 201, fresh.text
                acknowledged += 7
                assert balance(counter, account) == acknowledged
                replay = deposit(counter, account, 1, refused_key)  # the same key, again
                assert replay.status_code == 201 and replay.headers["idempotent-replayed"]
                assert balance(counter, account) == acknowledged
            server.kill()
            server.start()
            with server.client("counter") as counter:
                assert balance(counter, account) == acknowledged
        finally:
            if server.process is not None:
                server.stop()


def test_nonces_cannot_be_replayed_after_kill_9(tmp_path: Path) -> None:
    """Capture signed requests, kill -9 the server right after their answers, restart
    it: every captured request replayed (same nonce, same signature, timestamp still
    inside the window) is refused nonce-reused. Both kinds: a posting (through the
    engine) and a read answered from the customer state (not through the engine). (The
    40 refused replays come from one address: the failed-authentication limit is raised
    so that each one is answered on its nonce, not 429.)"""
    server = TallyServer(tmp_path / "data", extra=["--auth-failures-burst", "1000"]).start()
    captured: list[tuple[str, str, bytes, dict[str, str]]] = []
    try:
        with server.client("counter") as counter:
            customer = register(counter)
            account = open_class_i(counter, customer)
        counter_signer = signer("counter")
        with httpx.Client(base_url=server.url) as http:
            for index in range(20):
                path = f"/v1/customers/{customer['customer_id']}"
                headers = counter_signer.headers("GET", path, actor=TELLER)
                assert http.get(path, headers=headers).status_code == 200
                captured.append(("GET", path, b"", headers))
                path = f"/v1/accounts/{account}/cash-deposits"
                body = b'{"amount_minor":%d}' % (index + 1)
                headers = counter_signer.headers(
                    "POST", path, body, idempotency_key=key(), actor=TELLER
                )
                assert http.post(path, content=body, headers=headers).status_code == 201
                captured.append(("POST", path, body, headers))
        server.kill()  # no clean stop: whatever was only in memory is gone
        server.start()
        with httpx.Client(base_url=server.url) as http:
            for method, path, body, headers in captured:
                replayed = http.request(method, path, content=body or None, headers=headers)
                assert replayed.status_code == 401, (method, path, replayed.text)
                assert problem_type(replayed) == "nonce-reused"
    finally:
        if server.process is not None:
            server.stop()


def _nonce_records(data: Path) -> tuple[int, int]:
    """(nonce records written to the journal, nonces they hold)."""
    records = nonces = 0
    for stored in JournalScan(str(data)):
        if stored.entry.kind != EntryKind.PUT_STATE:
            continue
        for state_key, value in decode_state_changes(stored.entry.payload):
            if value is None:
                continue
            if state_key.startswith(b"nonce/"):  # the per-request form
                records += 1
                nonces += 1
            elif state_key.startswith(b"nonces/"):
                import orjson

                records += 1
                nonces += len(orjson.loads(value)["n"])
    return records, nonces


def test_nonces_are_compacted_not_one_record_per_request(tmp_path: Path) -> None:
    """Fire 400 signed requests from 40 clients at once (posting and reading): every
    nonce is durable (all 400 are in the journal), but in far fewer records than
    requests, because the requests that share a group share one batch record."""
    server = TallyServer(tmp_path / "data").start()
    clients, each = 40, 10
    try:
        with server.client("counter") as counter:
            customer = register(counter)
            account = open_class_i(counter, customer)
        before_records, before_nonces = _nonce_records(server.data_dir)
        counter_signer = signer("counter")
        barrier = threading.Barrier(clients)
        statuses: list[int] = []

        def client(index: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                barrier.wait()
                for step in range(each):
                    if (index + step) % 2:
                        path = f"/v1/customers/{customer['customer_id']}"
                        response = http.get(
                            path, headers=counter_signer.headers("GET", path, actor=TELLER)
                        )
                    else:
                        path = f"/v1/accounts/{account}/cash-deposits"
                        body = b'{"amount_minor":1}'
                        headers = counter_signer.headers(
                            "POST", path, body, idempotency_key=key(), actor=TELLER
                        )
                        response = http.post(path, content=body, headers=headers)
                    statuses.append(response.status_code)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(set(statuses)) == [200, 201] and len(statuses) == clients * each
        records, nonces = _nonce_records(server.data_dir)
        records -= before_records
        nonces -= before_nonces
        requests = clients * each
        print(f"nonce records per {requests} requests: {records}")
        assert nonces == requests  # every nonce of every answered request was written
        assert records <= requests // 2, (records, requests)
    finally:
        server.stop()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_directory_is_private(tmp_path: Path) -> None:
    """A new data directory is 0700 and everything the server writes in it 0600 (journal
    segments, lock, snapshots); an existing world-readable one (and its files) is
    tightened at start."""
    data = tmp_path / "data"
    server = TallyServer(data, extra=["--snapshot-every-entries", "5"]).start()
    try:
        with server.client("counter") as counter:
            account = open_class_i(counter, register(counter))
            for _ in range(12):
                assert deposit(counter, account, 1, key()).status_code == 201
        deadline = time.monotonic() + 30
        while not list(data.glob("snapshot-*.tls")):
            assert time.monotonic() < deadline, "no snapshot was written"
            time.sleep(0.05)
    finally:
        server.stop()
    files = [path for path in data.iterdir() if path.is_file()]
    assert any(p.name.startswith("journal-") for p in files)
    assert any(p.name.startswith("snapshot-") for p in files)
    assert _mode(data) == 0o700, oct(_mode(data))
    assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}

    os.chmod(data, 0o755)
    for path in files:
        os.chmod(path, 0o644)
    server.start()
    try:
        assert _mode(data) == 0o700, oct(_mode(data))
        assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}
    finally:
        server.stop()


@pytest.mark.pg
def test_postgresql_refusing_writes_answers_503_and_recovers(tmp_path: Path) -> None:
    """PostgreSQL mode: the database turns read-only under the running server (as a full
    or failing server does to writes): postings answer 503 storage-unavailable with
    Retry-After and /readyz names the error; once it takes writes again the server is
    ready by itself and the acknowledged balance is intact."""
    from tests.pg_helpers import psql, shared_cluster

    cluster = shared_cluster()
    name = f"tally_ro_{uuid.uuid4().hex[:12]}"
    psql(cluster, f"CREATE DATABASE {name}")
    server = TallyServer(tmp_path / "data", extra=["--store", cluster.dsn(name)]).start()
    try:
        with server.client("counter") as counter:
            account = open_class_i(counter, register(counter))
            assert deposit(counter, account, 500, key()).status_code == 201
            psql(cluster, f"ALTER DATABASE {name} SET default_transaction_read_only = on")
            psql(cluster, "SELECT pg_reload_conf()")
            # Sessions already open keep their setting: end them, as a failover would.
            psql(
                cluster,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                f" WHERE datname = '{name}' AND pid <> pg_backend_pid()",
            )
            refused = None
            for _ in range(50):
                refused = deposit(counter, account, 1, key())
                if refused.status_code != 201:
                    break
            assert refused is not None and refused.status_code == 503, refused.text
            assert refused.headers["retry-after"]
            deadline = time.monotonic() + 30
            while True:
                ready = readyz(server)
                if ready.status_code == 503 and "read-only" in ready.json().get("error", ""):
                    break
                assert time.monotonic() < deadline, (ready.text, server.log())
                time.sleep(0.1)
            later = deposit(counter, account, 1, key())
            assert later.status_code == 503 and problem_type(later) == "storage-unavailable"
            psql(cluster, f"ALTER DATABASE {name} RESET default_transaction_read_only")
            server.wait_ready(timeout_s=60)
            assert deposit(counter, account, 7, key()).status_code == 201
            assert balance(counter, account) == 507
    finally:
        server.stop()
