"""Shared pieces of the HTTP tests: a real `tally serve` process and signed clients.

`TallyServer` starts `python -m core serve --dev` on a free 127.0.0.1 port
with its own data directory, waits for /readyz, and stops it with SIGTERM (or
SIGKILL, for crash tests). Clients sign with the development secrets of
examples/channels.toml (which only `--dev` accepts). With `tls=(certfile,
keyfile)` it serves HTTPS and its clients trust that certificate. Its providers
(identity database, OCR, liveness, card issuer, SMS) are the test process's simulator
(tests/provider_helpers.py, `--providers URL`) unless the test names others or none.

Builders make customers with valid resident IDs and open funded accounts through the API
itself, as a channel would: `register` completes the real-name verification steps of the
client's channel kind (a remote channel sends the ID card image and the liveness token;
the counter's registration is verified in the one call) and checks the customer is
`verified`; `bind_card` passes the card binding's steps (the issuer's check, and at a
remote channel the SMS code read on the customer's simulated phone); `open_remote` binds
the card first, as every Class II/III opening must.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from channels.client import TallyClient
from core.providers import population
from core.services.identity import luhn_check_digit, resident_id_check_character
from tests.provider_helpers import provider_url, sms_code

REPO_ROOT = Path(__file__).resolve().parent.parent
CHANNELS_FILE = REPO_ROOT / "examples" / "channels.toml"
SCRYPT_N_TESTS = 1 << 10  # fast hashes in tests; the default cost is tested on its own
# Who the counter's requests name by default: a supervisor (no teller cap gets in the way
# of the tests' setups); tests of the roles name a teller themselves.
TELLER = ("T0001", "teller")
SUPERVISOR = ("S0001", "supervisor")
DEFAULT_ACTORS = {"counter": SUPERVISOR}
# `TallyServer(providers=...)`: this process's simulator (started when a server first needs
# it); None: no providers configured (a step that needs one stays pending).
SESSION_SIMULATOR = "session-simulator"
# The kinds whose customers prove who they are remotely (ID card image and liveness).
REMOTE_KINDS = ("app", "wechat", "internal")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TallyServer:
    def __init__(
        self,
        data_dir: Path,
        *,
        backend: str = "asyncio",
        server: str = "hypercorn",
        channels_file: Path = CHANNELS_FILE,
        extra: Sequence[str] = (),
        disk_delay_ms: int = 0,
        clock_file: Path | None = None,
        tls: tuple[Path, Path] | None = None,
        dev: bool = True,
        providers: str | None = SESSION_SIMULATOR,
    ) -> None:
        self.data_dir = data_dir
        # Set: tests/clock_serve.py, the services' clock moved by the seconds in this file.
        self.clock_file = clock_file
        self.disk_delay_ms = disk_delay_ms  # > 0: tests/slow_disk_serve.py, a slow journal
        self.backend = backend
        self.server = server
        self.channels_file = channels_file
        self.extra = list(extra)
        self.tls = tls
        self.dev = dev  # False: the channels file and --secrets in `extra` must be real ones
        # The providers' base URL (`--providers`), the session's simulator by default; None,
        # or `--providers`/`--providers-config` in `extra`: the server is given none here.
        self.providers = providers
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self.access_log = data_dir.parent / f"{data_dir.name}-access.jsonl"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client must trust to talk to this server (its own certificate)."""
        return ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else True

    def start(self, *, wait_ready: bool = True) -> TallyServer:
        assert self.process is None
        self.port = free_port()
        env = {name: value for name, value in os.environ.items() if name != "PYTHONOPTIMIZE"}
        # The launcher scripts run as scripts (their own folder on sys.path, not the
        # checkout): the checkout under test first, whatever the environment was built from.
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
        )
        launcher = (
            [str(REPO_ROOT / "tests" / "slow_disk_serve.py"), str(self.disk_delay_ms)]
            if self.disk_delay_ms
            else [str(REPO_ROOT / "tests" / "clock_serve.py"), str(self.clock_file)]
            if self.clock_file is not None
            else ["-m", "core", "serve"]
        )
        command = [
            sys.executable,
            *launcher,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data",
            str(self.data_dir),
            "--backend",
            self.backend,
            "--server",
            self.server,
            "--channels",
            str(self.channels_file),
            "--access-log",
            str(self.access_log),
            "--scrypt-n",
            str(SCRYPT_N_TESTS),
            "--accounts-max",
            "65536",
            "--transfers-max",
            "262144",
            *(["--dev"] if self.dev else []),  # the example registry's public secrets
            *(["--certfile", str(self.tls[0]), "--keyfile", str(self.tls[1])] if self.tls else []),
            *self.providers_arguments(),
            *self.extra,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
        log.close()
        if wait_ready:
            self.wait_ready()
        return self

    def providers_arguments(self) -> list[str]:
        if self.providers is None or any(
            argument.split("=")[0] in ("--providers", "--providers-config")
            for argument in self.extra
        ):
            return []
        url = provider_url() if self.providers == SESSION_SIMULATOR else self.providers
        return ["--providers", url]

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}: {self.log()}")
            try:
                ready = httpx.get(self.url + "/readyz", timeout=1, verify=self.verify)
                if ready.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        # A server that never became ready must not outlive the test that started it.
        self.kill()
        raise RuntimeError(f"server not ready after {timeout_s} s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> int:
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code

    def move_clock(self, offset_s: float) -> None:
        """Set the services' clock `offset_s` ahead of the wall clock (a clock_file server)."""
        assert self.clock_file is not None
        self.clock_file.write_text(f"{offset_s}\n")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def client(self, channel: str, **kwargs: Any) -> TallyClient:
        """A client signing for `channel`; at the counter it names a supervisor unless
        `actor=` says otherwise (None: no actor)."""
        key_id, secret = channel_secret(channel, self.channels_file)
        kwargs.setdefault("actor", DEFAULT_ACTORS.get(channel))
        if self.tls:
            kwargs.setdefault("verify", self.verify)
        return TallyClient(self.url, channel, key_id, secret, **kwargs)


def channel_secret(channel: str, channels_file: Path = CHANNELS_FILE) -> tuple[str, str]:
    entry = _channels(channels_file)[channel]["secrets"][0]
    return entry["key_id"], entry["secret"]


def channel_kind(channel: str, channels_file: Path = CHANNELS_FILE) -> str:
    """The kind of `channel` in the registry (examples/channels.toml by default)."""
    return str(_channels(channels_file)[channel]["kind"])


def _channels(channels_file: Path) -> dict[str, Any]:
    with open(channels_file, "rb") as file:
        return dict(tomllib.load(file)["channels"])


# --- builders -----------------------------------------------------------------------

_random = random.Random(20261121)


_issued_ids: set[str] = set()


def resident_id(birth: str = "19900307", region: str = "110105") -> str:
    """A valid 18-digit resident ID number (right check digit) for `birth` (YYYYMMDD), never
    one this process gave before (1000 sequence numbers per day: a test server shared by a
    module would otherwise meet a repeat, depending on which tests ran before)."""
    for _ in range(100_000):
        first = region + birth + f"{_random.randrange(1000):03d}"
        if first not in _issued_ids:
            _issued_ids.add(first)
            return first + resident_id_check_character(first)
    raise RuntimeError(f"no resident id left for {region} {birth}: pass another birth date")


def card_number(prefix: str = "622848") -> str:
    """A Luhn-valid 19-digit card number of another bank."""
    partial = prefix + f"{_random.randrange(10**12):012d}"
    return partial + luhn_check_digit(partial)


def mobile() -> str:
    return "139" + f"{_random.randrange(10**8):08d}"


def key() -> str:
    return str(uuid.uuid4())


def register_pending(
    client: TallyClient,
    name: str = "李四",
    birth: str = "19900307",
    *,
    id_number: str | None = None,
    mobile_number: str | None = None,
) -> dict[str, Any]:
    """POST /v1/customers and nothing more: the customer as registered (`kyc` as the
    registration left it: `pending` at a remote channel until its steps are done)."""
    body = {
        "name": name,
        "id_number": id_number or resident_id(birth),
        "mobile": mobile_number or mobile(),
    }
    response = client.post("/v1/customers", body)
    assert response.status_code == 201, response.text
    customer: dict[str, Any] = response.json()
    customer["_id_number"] = body["id_number"]
    customer["_mobile"] = body["mobile"]
    return customer


def register(
    client: TallyClient,
    name: str = "李四",
    birth: str = "19900307",
    *,
    id_number: str | None = None,
    mobile_number: str | None = None,
) -> dict[str, Any]:
    """Register a customer at `client`'s channel and complete the verification steps its
    kind requires (app, wechat, internal: the ID card image and the liveness check; the
    counter: verified at registration, its teller named); the customer, `kyc` as the
    last answer had it, which must say `verified`."""
    customer = register_pending(
        client, name, birth, id_number=id_number, mobile_number=mobile_number
    )
    if channel_kind(client.signer.channel) in REMOTE_KINDS:
        verify_remotely(client, customer)
    assert customer["kyc"]["status"] == "verified", customer["kyc"]
    return customer


def verify_remotely(client: TallyClient, customer: dict[str, Any]) -> dict[str, Any]:
    """Send the customer's ID card image (OCR) and their live face (liveness), as a
    remote channel's app does; `customer["kyc"]` becomes the last verification read."""
    path = f"/v1/customers/{customer['customer_id']}/verification"
    image = population.id_card_image(customer["name"], customer["_id_number"])
    document = client.post(
        path + "/id-document",
        {"image_base64": base64.b64encode(image).decode(), "media_type": "image/png"},
    )
    assert document.status_code == 200, document.text
    token = population.liveness_token(population.face_of(customer["_id_number"]))
    live = client.post(path + "/liveness", {"token": token})
    assert live.status_code == 200, live.text
    kyc: dict[str, Any] = live.json()
    customer["kyc"] = kyc
    return kyc


def open_class_i(counter: TallyClient, customer: dict[str, Any], password: str = "135790") -> str:
    response = counter.post(
        f"/v1/customers/{customer['customer_id']}/accounts",
        {"class": "class_i", "password": password},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["account_id"])


def bound_card_of(customer: dict[str, Any], number: str | None = None) -> dict[str, str]:
    """The five elements of a card the customer holds: by default the simulated issuer's
    card of that person (`population.card_for`), else `number` (an own Class I card)."""
    return {
        "card_number": number or population.card_for(customer["_id_number"]),
        "card_type": "class_i_debit",
        "holder_name": customer["name"],
        "holder_id_number": customer["_id_number"],
        "reserved_mobile": customer["_mobile"],
    }


def start_binding(
    client: TallyClient, customer: dict[str, Any], card: dict[str, Any], **kwargs: Any
) -> Any:
    """POST the card binding (the issuer's check runs at once); the response."""
    return client.post(f"/v1/customers/{customer['customer_id']}/card-bindings", card, **kwargs)


def bind_card(
    client: TallyClient,
    customer: dict[str, Any],
    card: str | None = None,
    *,
    session: str | None = None,
) -> str:
    """Bind `card` (default: the issuer's card of the customer, `bound_card_of`) at
    `client`'s channel through every step it requires: the issuer's check, and where an
    SMS code is required the code read on the customer's simulated phone and confirmed.
    The binding's id; it must be `verified`."""
    kwargs = {"session": session} if session else {}
    started = start_binding(client, customer, bound_card_of(customer, card), **kwargs)
    assert started.status_code == 201, started.text
    binding = started.json()
    if binding["status"] == "pending" and "sms_code" in binding["required"]:
        binding = confirm_binding_sms(client, customer, binding, **kwargs)
    assert binding["status"] == "verified", binding
    return str(binding["binding_id"])


def confirm_binding_sms(
    client: TallyClient, customer: dict[str, Any], binding: dict[str, Any], **kwargs: Any
) -> dict[str, Any]:
    """Confirm `binding`'s SMS code (asking for one if none was sent): the binding after."""
    base = f"/v1/customers/{customer['customer_id']}"
    subject = {"operation": "bind_card", "subject": binding["binding_id"]}
    challenge = binding.get("sms_challenge")
    if challenge is None:
        sent = client.post(base + "/sms-codes", subject, **kwargs)
        assert sent.status_code == 201, sent.text
        challenge = sent.json()
    code = sms_code(customer["_mobile"])
    confirmed = client.post(
        f"{base}/sms-codes/{challenge['challenge_id']}/confirmation",
        {**subject, "code": code},
        **kwargs,
    )
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "confirmed", confirmed.text
    read = client.get(f"{base}/card-bindings/{binding['binding_id']}", **kwargs)
    assert read.status_code == 200, read.text
    after: dict[str, Any] = read.json()
    return after


def open_remote(
    client: TallyClient,
    customer: dict[str, Any],
    account_class: str = "class_ii",
    *,
    card: str | None = None,
    password: str = "135790",
    session: str | None = None,
) -> str:
    """Bind the card (`bind_card`) and open a Class II/III account bound to it."""
    bound = bound_card_of(customer, card)
    bind_card(client, customer, bound["card_number"], session=session)
    response = client.post(
        f"/v1/customers/{customer['customer_id']}/accounts",
        {"class": account_class, "bound_card": bound, "password": password},
        **({"session": session} if session else {}),
    )
    assert response.status_code == 201, response.text
    return str(response.json()["account_id"])


def cash_deposit(counter: TallyClient, account_id: str, amount_minor: int) -> None:
    response = counter.post(
        f"/v1/accounts/{account_id}/cash-deposits",
        {"amount_minor": amount_minor},
        idempotency_key=key(),
    )
    assert response.status_code == 201, response.text


def topup(client: TallyClient, account_id: str, amount_minor: int, password: str = "135790") -> Any:
    return client.post(
        f"/v1/accounts/{account_id}/topups",
        {"amount_minor": amount_minor, "password": password},
        idempotency_key=key(),
    )


def open_session(client: TallyClient, account_id: str, password: str = "135790") -> str:
    """A customer session at `client`'s channel for the holder of `account_id` (wechat and
    app read a customer's data only with one)."""
    response = client.post("/v1/sessions", {"account_id": account_id, "password": password})
    assert response.status_code == 201, response.text
    return str(response.json()["session"])


def read_as_holder(client: TallyClient, account_id: str, password: str = "135790") -> Any:
    """GET the account at `client`'s channel as its holder would: with a fresh session."""
    session = open_session(client, account_id, password)
    response = client.get(f"/v1/accounts/{account_id}", session=session)
    assert response.status_code == 200, response.text
    return response.json()


def balance(
    client: TallyClient, account_id: str, *, session: str | None = None, token: str | None = None
) -> int:
    """The balance as `client`'s channel reads it (wechat/app: pass the holder's session or
    a token; the counter and the bank's channel need neither)."""
    response = client.get(f"/v1/accounts/{account_id}", session=session, token=token)
    assert response.status_code == 200, response.text
    return int(response.json()["balance_minor"])


def problem_type(response: Any) -> str:
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    return str(response.json()["type"]).rsplit("/", 1)[-1]
