"""The provider simulator the tests share, and real-name verification at the services level.

A customer is `verified` only when the identity database, the OCR, the liveness check,
the card issuer and the SMS gateway (core/providers) agreed, so every test that
registers a customer or binds a card needs providers. One simulator per test process
(`core.providers.sim.running_simulator(seed=SEED)`, over HTTP as a real provider) is
started the first time a test asks for `provider_url()` and stopped at the end of the
session (tests/conftest.py) or, outside pytest, when the process exits; the processes a
test starts (a bank killed with SIGKILL, a server) use the same one. Tests of the
providers' failures start their own simulator with the rates or faults they need.

The services-level builders do what a channel does: `register_at_counter` registers with
a supervisor named (the teller's face-to-face check), so the customer is verified in the
one call; `bind_card` starts a binding, reads the SMS code on the customer's simulated
phone (`/sim/sms/{mobile}`) and confirms it, and returns the verified binding's id that a
Class II/III opening with that card then uses.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from typing import Any

import httpx

from core.providers import population
from core.providers.client import HttpProviders
from core.providers.config import ProvidersConfig
from core.providers.sim import running_simulator
from core.services.bank import Bank
from core.services.commands import (
    NO_PROOF,
    Caller,
    ConfirmSmsCode,
    OpenSession,
    Proof,
    RegisterCustomer,
    RequestSmsCode,
    StartCardBinding,
)
from core.services.results import CardBindingRead, CustomerRead

SEED = 17
# Set by the test process that started the simulator: its children use the same one.
SIMULATOR_URL_ENV = "TALLY_TEST_SIMULATOR_URL"
# Who registers at the counter in the services tests: a supervisor, named (the counter's
# registration includes the teller's confirmation, which needs the teller).
COUNTER_DESK = Caller("counter", "counter", 3, "S0001", "supervisor")
BIND_CARD = "bind_card"

_lock = threading.Lock()
_simulator: contextlib.ExitStack | None = None
_url = ""


def provider_url() -> str:
    """The base URL of this process's simulator (started now if it is not running), or
    of the test process's own when this is a child it started (`SIMULATOR_URL_ENV`)."""
    global _simulator, _url
    with _lock:
        inherited = os.environ.get(SIMULATOR_URL_ENV)
        if _simulator is None and inherited:
            return inherited
        if _simulator is None:
            stack = contextlib.ExitStack()
            _url = stack.enter_context(running_simulator(seed=SEED))
            _simulator = stack
            # Child processes of the tests (a bank SIGKILLed mid-way, ...) use this one.
            os.environ[SIMULATOR_URL_ENV] = _url
            atexit.register(stop_simulator)
        return _url


def stop_simulator() -> None:
    """Stop this process's simulator if one was started (the session's end, or exit)."""
    global _simulator, _url
    with _lock:
        stack, _simulator, _url = _simulator, None, ""
        if stack is not None:
            os.environ.pop(SIMULATOR_URL_ENV, None)
    if stack is not None:
        stack.close()


def simulator_started() -> bool:
    return _simulator is not None


def providers(url: str | None = None) -> HttpProviders:
    """Providers for a `Bank` in the test process: all five at the simulator."""
    return HttpProviders(ProvidersConfig.at(url or provider_url()))


def sms_messages(mobile: str, url: str | None = None) -> list[dict[str, Any]]:
    """The texts the simulated SMS gateway delivered to `mobile` (newest last)."""
    response = httpx.get(f"{url or provider_url()}/sim/sms/{mobile}", timeout=10)
    assert response.status_code == 200, response.text
    return list(response.json()["messages"])


def sms_code(mobile: str, url: str | None = None) -> str:
    """The one-time code in the newest SMS `mobile` received."""
    messages = sms_messages(mobile, url)
    assert messages, f"no SMS reached {mobile}"
    code = population.sms_code_in(messages[-1]["text"])
    assert code is not None, "the newest SMS holds no code"
    return code


async def sms_code_async(mobile: str, url: str | None = None) -> str:
    """`sms_code` from inside an event loop (asyncio or trio)."""
    base = url or provider_url()
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{base}/sim/sms/{mobile}")
    assert response.status_code == 200, response.text
    messages = response.json()["messages"]
    assert messages, f"no SMS reached {mobile}"
    code = population.sms_code_in(messages[-1]["text"])
    assert code is not None, "the newest SMS holds no code"
    return code


def bank_with_providers(*args: Any, **kwargs: Any) -> Bank:
    """`Bank(*args, **kwargs)` with the simulator's providers (unless given)."""
    kwargs.setdefault("providers", providers())
    return Bank(*args, **kwargs)


async def register_at_counter(
    bank: Bank,
    name: str,
    id_number: str,
    mobile: str,
    caller: Caller = COUNTER_DESK,
) -> CustomerRead:
    """Register at the counter (a teller named): verified in the one call."""
    customer = await bank.customers.register(RegisterCustomer(caller, name, id_number, mobile))
    assert customer.kyc["status"] == "verified", customer.kyc
    return customer


async def session_proof(bank: Bank, caller: Caller, account_id: int, password: str) -> Proof:
    """A session of the holder of `account_id` at `caller`'s channel, as a `Proof` (what a
    channel that did not register the customer shows to act for them)."""
    opened = await bank.auth.open_session(OpenSession(caller, account_id, password))
    return Proof(session=opened.session)


def card_of(
    name: str, id_number: str, mobile: str, number: str | None = None, index: int = 0
) -> dict[str, str]:
    """The five elements of a card the person holds: by default the simulated issuer's
    card `index` of that person (`population.card_for`), else `number` (an own Class I)."""
    return {
        "card_number": number or population.card_for(id_number, index),
        "card_type": "class_i_debit",
        "holder_name": name,
        "holder_id_number": id_number,
        "reserved_mobile": mobile,
    }


async def bind_card(
    bank: Bank,
    caller: Caller,
    customer_id: str,
    card: dict[str, Any],
    *,
    proof: Proof = NO_PROOF,
    url: str | None = None,
) -> str:
    """Bind `card` for the customer at `caller`'s channel, passing every step its policy
    requires (the issuer's check; at a remote channel the SMS code read on the mobile
    the customer registered), and return the verified binding's id. `proof`: the
    customer's session where `caller` did not register them (a counter needs none)."""
    binding = await bank.verification.start_binding(
        StartCardBinding(caller, customer_id, card, proof)
    )
    if binding.status == "pending" and "sms_code" in binding.required:
        binding = await confirm_binding_sms(bank, caller, customer_id, binding, proof, url)
    assert binding.status == "verified", binding
    return binding.binding_id


async def confirm_binding_sms(
    bank: Bank,
    caller: Caller,
    customer_id: str,
    binding: CardBindingRead,
    proof: Proof = NO_PROOF,
    url: str | None = None,
) -> CardBindingRead:
    """Enter the SMS code of `binding` (asking for one if none was sent)."""
    challenge = binding.sms_challenge
    if challenge is None:
        sent = await bank.verification.request_sms_code(
            RequestSmsCode(caller, customer_id, BIND_CARD, binding.binding_id, proof)
        )
        challenge_id = sent.challenge_id
    else:
        challenge_id = challenge["challenge_id"]
    # The code goes to the mobile the customer registered (the card's reserved one in
    # these tests).
    code = await sms_code_async(bank.customers.customer_of(customer_id).mobile, url)
    confirmed = await bank.verification.confirm_sms_code(
        ConfirmSmsCode(
            caller, customer_id, challenge_id, BIND_CARD, binding.binding_id, code, proof
        )
    )
    assert confirmed.status == "confirmed", confirmed
    return bank.verification.read_binding(caller, customer_id, binding.binding_id, proof)
