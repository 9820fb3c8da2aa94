"""Kill -9 a front-end, or the core behind front-ends, mid-load: nothing acknowledged is
lost, nothing is posted twice, and every retry meets its first outcome.

Clients post signed single transfers from one account to another with their own
Idempotency-Keys and retry a request that failed for the connection or was answered
503 (with the same key, freshly signed), as a channel does. At the end every key has
been acknowledged once; a retry of a key acknowledged before the kill is answered as a
replay of the same transfer; the two balances moved by exactly the sum of the keys'
amounts (a key posted twice would move them twice).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from channels.client import TallyClient
from channels.http.bench import secret_of, setup_accounts
from core.bench.server import children_of, cpu_seconds
from tests.http_helpers import REPO_ROOT, TallyServer, free_port

CLIENTS = 16
FUNDING_MINOR = 50_000_000  # setup_accounts funds each account with this


class Load:
    """`CLIENTS` threads posting transfers debit -> credit until stopped, each request
    retried until it is answered 201 (or a refusal that is not the core's absence)."""

    def __init__(self, urls: Callable[[int], str], debit: str, credit: str, token: str) -> None:
        self.urls = urls  # which front-end the client's n-th attempt goes to
        self.debit, self.credit, self.token = debit, credit, token
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acknowledged: dict[str, tuple[int, str]] = {}  # key -> (amount, transfer id)
        self.retried = 0  # attempts that met a lost connection or a 503
        self.unavailable = 0  # 503s with Retry-After from a front-end
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(CLIENTS)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in self.threads), "a client hung"

    def _run(self, client_index: int) -> None:
        """One channel connection, kept alive across requests as a channel's is, and
        opened again (to the next front-end) after a failure."""
        key_id, secret = secret_of("app")
        attempt = 0
        sent = 0
        client = TallyClient(self.urls(client_index), "app", key_id, secret, timeout_s=20)
        try:
            while not self.stop.is_set():
                key = f"crash-{client_index}-{sent}-{secrets.token_hex(4)}"
                amount = 1 + sent % 7
                sent += 1
                deadline = time.monotonic() + 90
                while True:
                    if time.monotonic() > deadline:
                        self.failures.append(f"{key}: not answered in 90 s")
                        return
                    try:
                        response = client.post(
                            "/v1/transfers",
                            {"debit_account_id": self.debit, "credit_account_id": self.credit,
                             "amount_minor": amount},
                            idempotency_key=key, token=self.token,
                        )  # fmt: skip
                    except httpx.HTTPError:
                        response = None
                    if response is not None and response.status_code == 201:
                        with self.lock:
                            self.acknowledged[key] = (amount, response.json()["transfer_id"])
                        break
                    if response is not None and response.status_code != 503:
                        self.failures.append(f"{key}: {response.status_code} {response.text[:300]}")
                        return
                    with self.lock:
                        self.retried += 1
                        if response is not None and response.headers.get("retry-after"):
                            self.unavailable += 1
                    client.close()
                    attempt += 1
                    time.sleep(0.05)
                    client = TallyClient(
                        self.urls(client_index + attempt), "app", key_id, secret, timeout_s=20
                    )
        finally:
            client.close()


def balance_of(url: str, account: str, token: str) -> int:
    with TallyClient(url, "app", *secret_of("app")) as client:
        response = client.get(f"/v1/accounts/{account}", token=token)
        assert response.status_code == 200, response.text
        return int(response.json()["balance_minor"])


def check_exact(url: str, load: Load, debit: str, credit: str, tokens: dict[str, str]) -> None:
    assert not load.failures, load.failures[:5]
    moved = sum(amount for amount, _ in load.acknowledged.values())
    assert moved > 0
    assert balance_of(url, debit, tokens[debit]) == FUNDING_MINOR - moved
    assert balance_of(url, credit, tokens[credit]) == FUNDING_MINOR + moved


def replays_match(
    url: str, load: Load, debit: str, credit: str, token: str, keys: list[str]
) -> None:
    """A retry of each of `keys` is answered as a replay of its first transfer."""
    with TallyClient(url, "app", *secret_of("app")) as client:
        for key in keys:
            amount, transfer_id = load.acknowledged[key]
            response = client.post(
                "/v1/transfers",
                {"debit_account_id": debit, "credit_account_id": credit, "amount_minor": amount},
                idempotency_key=key, token=token,
            )  # fmt: skip
            assert response.status_code == 201, response.text
            assert response.headers.get("idempotent-replayed") == "true", key
            assert response.json()["transfer_id"] == transfer_id


def test_killing_a_front_end_loses_nothing_and_posts_nothing_twice(tmp_path: Path) -> None:
    """`tally serve --workers 2`: one front-end is killed with SIGKILL while the clients
    post through both; their requests on it fail (a lost connection), their retries land on
    the other front-end (or the restarted one), every key ends acknowledged exactly once,
    and the core started the killed front-end again."""
    server = TallyServer(tmp_path / "data", extra=["--workers", "2", "--transfers-max", "65536"])
    server.start()
    try:
        assert server.process is not None
        accounts, tokens = setup_accounts(server.url, 2)
        debit, credit = accounts
        front_ends = children_of(server.process.pid)
        assert len(front_ends) == 2, front_ends
        load = Load(lambda _: server.url, debit, credit, tokens[debit])
        load.start()
        time.sleep(1.5)
        before_kill = set(load.acknowledged)
        busy = max(front_ends, key=lambda pid: cpu_seconds([pid]))  # the one serving most
        os.kill(busy, signal.SIGKILL)
        time.sleep(2.5)
        load.finish()
        assert load.retried > 0, "no request met the killed front-end: the kill tested nothing"
        restarted = children_of(server.process.pid)
        assert len(restarted) == 2 and busy not in restarted, restarted
        check_exact(server.url, load, debit, credit, tokens)
        replays_match(server.url, load, debit, credit, tokens[debit], sorted(before_kill)[:20])
        assert "worker_exited" in server.log() or "worker_exited" in server.log_path.read_text()
    finally:
        server.stop()


def start_gateway(link: str, secret_file: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "core", "gateway", "--core", link,
             "--link-secret-file", str(secret_file), "--port", str(port), "--name", log.stem],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=out,
        )  # fmt: skip


def wait_answering(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout_s} s")


def test_killing_the_core_behind_front_ends_loses_nothing(tmp_path: Path) -> None:
    """Two `tally gateway` front-ends before one core (`tally serve --link`): the core is
    killed with SIGKILL mid-load. The front-ends answer 503 with Retry-After while it is
    down, reconnect by themselves once it is started again on the same data directory,
    and the clients' retries resolve every key: acknowledged ones as replays, the ones in
    flight at the kill posted once."""
    link = f"unix:{tmp_path / 'link.sock'}"
    secret_file = tmp_path / "link.secret"
    secret_file.write_text(secrets.token_urlsafe(32))
    secret_file.chmod(0o600)
    extra = ["--link", link, "--link-secret-file", str(secret_file), "--transfers-max", "65536"]
    core = TallyServer(tmp_path / "data", extra=extra).start()
    ports = [free_port(), free_port()]
    gateways = [
        start_gateway(link, secret_file, port, tmp_path / f"gateway-{index}.log")
        for index, port in enumerate(ports)
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url in urls:
            wait_answering(url)
        accounts, tokens = setup_accounts(core.url, 2)
        debit, credit = accounts
        load = Load(lambda n: urls[n % 2], debit, credit, tokens[debit])
        load.start()
        time.sleep(1.5)
        core.kill()
        killed_at = set(load.acknowledged)
        time.sleep(1.0)  # the front-ends answer 503 meanwhile
        restarted = TallyServer(tmp_path / "data", extra=extra).start()
        time.sleep(2.0)
        load.finish()
        assert load.unavailable > 0, "no 503 with Retry-After while the core was down"
        assert all(gateway.poll() is None for gateway in gateways), "a front-end died"
        check_exact(restarted.url, load, debit, credit, tokens)
        replays_match(urls[0], load, debit, credit, tokens[debit], sorted(killed_at)[:20])
        logs = "".join((tmp_path / f"gateway-{index}.log").read_text() for index in range(2))
        assert logs.count('"link_connected"') >= 4, "the front-ends did not reconnect"
        restarted.stop()
    finally:
        for gateway in gateways:
            gateway.kill()
            gateway.wait()
        if core.process is not None:
            core.kill()
