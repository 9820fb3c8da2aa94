"""Maker-checker approvals (core/services/approvals.py) without HTTP: a real engine on a
real journal in a tmp dir, the shipped operators (core/data/operators.toml), typed
calls, and a clock the tests move (the services' and the engine's), so an apply time or
an expiry passes without sleeping. What an approved change does is checked by its
effect: a lowered channel cap refuses a deposit the shipped rules took, a lock is
lifted, a transfer is reversed, a credit limit is kept. The crash test SIGKILLs a child
process right after it acknowledged an applied change and reopens the data directory.
"""

from __future__ import annotations

import functools
import os
import select
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from core.data import DEFAULT_OPERATORS_PATH, DEFAULT_RULES_PATH
from core.services.approvals import Approvals
from core.services.bank import Bank
from core.services.commands import Caller, Movement, OpenAccount
from core.services.lifecycle import Settings
from core.services.operators import OperatorCaller, load_operators, parse_operators
from core.services.refusals import Code, Refused
from ledger.records import account_view
from ledger.types import CreateTransferResult
from limits.rules import load_rules
from tests.provider_helpers import providers, register_at_counter

R = CreateTransferResult
NS_PER_S = 1_000_000_000
NS_PER_HOUR = 3600 * NS_PER_S
# 2026-01-05 02:00 UTC: 10:00 in Shanghai, inside the business day 2026-01-05.
START_NS = 1_767_578_400_000_000_000
COUNTER = Caller("counter", "counter", 3)
ID_NUMBER = "11010519491231002X"
PASSWORD = "135790"
CNY = 100
SHIPPED_LIMITS = Path(DEFAULT_RULES_PATH).read_text(encoding="utf-8")
COUNTER_HEADER = '[channels.counter]\nid = 3\nkind = "counter"'
# The change the tests approve: the counter may move at most 10,000 CNY per posting.
LOWERED_LIMITS = SHIPPED_LIMITS.replace(
    COUNTER_HEADER, COUNTER_HEADER + "\ntransfer_cap_minor = 1_000_000", 1
)
assert LOWERED_LIMITS != SHIPPED_LIMITS
OPERATORS = load_operators(DEFAULT_OPERATORS_PATH)


def op(name: str) -> OperatorCaller:
    caller = OPERATORS.caller(name, "192.0.2.7")
    assert caller is not None, name
    return caller


class Clock:
    """The services' and the engine's clock: moved by the tests, never slept on."""

    def __init__(self, now_ns: int = START_NS) -> None:
        self.now = now_ns

    def now_ns(self) -> int:
        return self.now


def approvals_of(bank: Bank) -> Approvals:
    """The bank's approvals service (built here while the bank does not build one)."""
    existing = getattr(bank, "approvals", None)
    if isinstance(existing, Approvals):
        return existing
    approvals = Approvals(bank.core, bank.auth, bank.payments)
    bank.approvals = approvals  # type: ignore[attr-defined]
    return approvals


@asynccontextmanager
async def running_bank(
    directory: Path, clock: Clock | None = None, setup: Callable[[Bank], None] | None = None
) -> AsyncIterator[Bank]:
    settings = Settings(str(directory), scrypt_n=1 << 10, approval_expiry_s=86_400)
    async with providers() as simulated, anyio.create_task_group() as task_group:
        if clock is None:
            bank = Bank(settings, load_rules(DEFAULT_RULES_PATH), providers=simulated)
        else:
            bank = Bank(
                settings,
                load_rules(DEFAULT_RULES_PATH),
                providers=simulated,
                now_ns=clock.now_ns,
                engine_clock=clock,
            )
        approvals_of(bank)
        if setup is not None:
            setup(bank)
        await task_group.start(bank.serve)
        with anyio.fail_after(30):
            while not bank.core.ready:  # noqa: ASYNC110 (readiness is a flag, not an event)
                await anyio.sleep(0.01)
        yield bank
        task_group.cancel_scope.cancel()


def run(test: Callable[[Path], object]) -> Callable[[Path], None]:
    def runner(tmp_path: Path) -> None:
        anyio.run(test, tmp_path)  # type: ignore[arg-type]

    runner.__doc__ = test.__doc__
    runner.__name__ = test.__name__
    return runner


async def refusal_of(call: Callable[[], Any]) -> Refused:
    with pytest.raises(Refused) as caught:
        await call()
    return caught.value


async def funded_account(bank: Bank, amount_minor: int) -> tuple[str, int]:
    """A customer with a Class I account holding `amount_minor` (cash at the counter)."""
    customer = await register_at_counter(bank, "张三", ID_NUMBER, "13800138000")
    opening = OpenAccount(COUNTER, customer.customer_id, 1, None, PASSWORD)
    account_id = (await bank.accounts.open(opening)).account_id
    if amount_minor:
        await bank.payments.cash_deposit(
            Movement(COUNTER, f"fund-{account_id}", account_id, amount_minor)
        )
    return customer.customer_id, account_id


async def balance(bank: Bank, account_id: int) -> int:
    raw = await bank.core.read(lambda ledger: ledger.lookup_account(account_id))
    assert raw is not None, account_id
    view = account_view(raw)
    return int(view.credits_posted - view.debits_posted)


async def wait_state(approvals: Approvals, request_id: str, state: str) -> dict[str, Any]:
    """The request once the housekeeping tick (once a second) has brought it to `state`."""
    with anyio.fail_after(10):
        while approvals.get(request_id)["state"] != state:  # noqa: ASYNC110 (a record, not an event)
            await anyio.sleep(0.05)
    return approvals.get(request_id)


def limits_change(base_version: int = 0, text: str = LOWERED_LIMITS) -> dict[str, Any]:
    return {"text": text, "base_version": base_version}


# --- the operator registry -----------------------------------------------------------


def test_shipped_operators_cover_every_role_and_match_the_example() -> None:
    """The shipped file equals the example byte for byte and has a maker and a checker
    for every kind the core registers."""
    example = Path(__file__).resolve().parents[2] / "examples" / "operators.toml"
    assert Path(DEFAULT_OPERATORS_PATH).read_bytes() == example.read_bytes()
    roles = {operator.role for operator in OPERATORS.operators.values()}
    assert roles == {
        "teller", "supervisor", "risk_officer", "product_manager", "loan_officer",
        "administrator",
    }  # fmt: skip
    assert OPERATORS.secret("risk1", "dev-risk1-1") is not None
    assert OPERATORS.secret("risk1", "dev-risk2-1") is None  # another operator's key


def test_operator_file_errors_are_all_reported() -> None:
    text = """
[operators.Bad]
role = "teller"
[[operators.Bad.secrets]]
key_id = "k1"
secret = "DEVELOPMENT-ONLY-operator-0001-not-for-production"

[operators.ok]
role = "cashier"
colour = "blue"
[[operators.ok.secrets]]
key_id = "k2"
secret = "short"
"""
    with pytest.raises(Exception) as caught:
        parse_operators(text, "ops.toml")
    problems = caught.value.problems  # type: ignore[attr-defined]
    assert any("operators.Bad" in line and "1-32 characters" in line for line in problems)
    assert any("operators.ok.role" in line for line in problems)
    assert any("operators.ok.colour" in line and "unknown key" in line for line in problems)
    assert any("operators.ok.secrets[0].secret" in line for line in problems)


# --- maker and checker -----------------------------------------------------------------


@run
async def test_self_approval_refused_and_another_checker_applies(tmp_path: Path) -> None:
    """An administrator cannot approve their own change to the channel registry (they
    hold `approve:channels`); a second administrator can, and it is applied at once."""
    installed: list[str] = []

    def register_channels(bank: Bank) -> None:
        approvals_of(bank).register_parameter(
            "channels",
            parse=lambda text, source: text,
            install=installed.append,
            text=lambda: "[channels]\n# shipped\n",
        )

    async with running_bank(tmp_path, Clock(), register_channels) as bank:
        approvals = approvals_of(bank)
        made = await approvals.request(
            op("admin1"), "channels", "", {"text": "[channels]\n# v1\n", "base_version": 0}
        )
        assert made["state"] == "pending" and made["maker"] == "admin1"
        assert made["diff"].startswith("--- channels version 0")
        refusal = await refusal_of(lambda: approvals.approve(op("admin1"), made["id"]))
        assert refusal.refusal.code == Code.APPROVAL_SELF
        assert approvals.get(made["id"])["state"] == "pending"
        assert installed == []
        applied = await approvals.approve(op("admin2"), made["id"], "checked")
        assert applied["state"] == "applied" and applied["checker"] == "admin2"
        assert installed == ["[channels]\n# v1\n"]
        assert approvals.current("channels")["version"] == 1
        whats = [(entry["who"], entry["what"]) for entry in approvals.audit()]
        assert whats == [("admin1", "request"), ("admin2", "approve"), ("system", "applied")]
        assert approvals.audit()[0]["from"] == "192.0.2.7"


@run
async def test_roles_checker_only_and_wrong_role_refused(tmp_path: Path) -> None:
    """A supervisor (checker only) cannot initiate a reversal or an unlock; a product
    manager cannot approve the limits they propose; a teller cannot approve."""
    async with running_bank(tmp_path, Clock()) as bank:
        approvals = approvals_of(bank)
        _customer, account_id = await funded_account(bank, 0)
        payload = {"account_id": str(account_id)}
        refusal = await refusal_of(
            lambda: approvals.request(op("supervisor1"), "unlock_password", "", payload)
        )
        assert refusal.refusal.code == Code.OPERATOR_NOT_PERMITTED
        assert refusal.refusal.extras["permission"] == "request:unlock_password"
        made = await approvals.request(op("product1"), "limits", "", limits_change())
        for name in ("product1", "teller1", "risk1"):
            refusal = await refusal_of(functools.partial(approvals.approve, op(name), made["id"]))
            assert refusal.refusal.code == Code.OPERATOR_NOT_PERMITTED, name
        unlock = await approvals.request(op("teller1"), "unlock_password", "", payload)
        refusal = await refusal_of(lambda: approvals.approve(op("teller1"), unlock["id"]))
        assert refusal.refusal.code == Code.OPERATOR_NOT_PERMITTED
        assert approvals.list(state="pending") == [approvals.get(unlock["id"]),
                                                   approvals.get(made["id"])]  # fmt: skip


@run
async def test_duplicate_pending_request_refused(tmp_path: Path) -> None:
    """A second request for the same kind and object while one is pending (or approved
    and not yet applied) is refused, naming the first; after a rejection it is taken."""
    async with running_bank(tmp_path, Clock()) as bank:
        approvals = approvals_of(bank)
        first = await approvals.request(op("product1"), "limits", "", limits_change())
        refusal = await refusal_of(
            lambda: approvals.request(op("product1"), "limits", "", limits_change())
        )
        assert refusal.refusal.code == Code.APPROVAL_DUPLICATE
        assert refusal.refusal.extras["request_id"] == first["id"]
        refusal = await refusal_of(lambda: approvals.reject(op("admin1"), first["id"], ""))
        assert refusal.refusal.code == Code.INVALID_FIELD  # a rejection says why
        rejected = await approvals.reject(op("admin1"), first["id"], "not this quarter")
        assert rejected["state"] == "rejected"
        refusal = await refusal_of(lambda: approvals.approve(op("admin1"), first["id"]))
        assert refusal.refusal.code == Code.APPROVAL_NOT_PENDING
        second = await approvals.request(op("product1"), "limits", "", limits_change())
        assert second["id"] != first["id"] and approvals.get(first["id"])["state"] == "rejected"


@run
async def test_invalid_parameters_refused_with_every_error(tmp_path: Path) -> None:
    """A proposed file that does not validate is refused with each problem; a change
    that would remove a channel is refused too; nothing is recorded."""
    async with running_bank(tmp_path, Clock()) as bank:
        approvals = approvals_of(bank)
        bad = LOWERED_LIMITS.replace("transfer_cap_minor = 1_000_000", "transfer_cap_minor = 1.5")
        bad = bad.replace('kind = "counter"', 'kind = "counter"\nspeed = 3', 1)
        refusal = await refusal_of(
            lambda: approvals.request(op("product1"), "limits", "", limits_change(text=bad))
        )
        assert refusal.refusal.code == Code.PARAMETER_INVALID
        messages = " ".join(error["message"] for error in refusal.refusal.extras["errors"])
        assert "speed" in messages and "transfer_cap_minor" in messages
        without_atm = SHIPPED_LIMITS.replace(
            "[channels.atm]\nid = 4 ", "[channels.atm]\nid = 44", 1
        )
        assert without_atm != SHIPPED_LIMITS
        refusal = await refusal_of(
            lambda: approvals.request(op("product1"), "limits", "", limits_change(text=without_atm))
        )
        assert refusal.refusal.code == Code.PARAMETER_INVALID
        refusal = await refusal_of(
            lambda: approvals.request(op("product1"), "limits", "", limits_change(5))
        )
        assert refusal.refusal.code == Code.APPROVAL_STALE
        assert refusal.refusal.extras == {"base_version": 5, "version": 0}
        assert approvals.list() == [] and approvals.audit() == []


# --- apply at a stated time, expiry ------------------------------------------------------


@run
async def test_apply_at_a_stated_time(tmp_path: Path) -> None:
    """An approved change with an apply time waits for it ("approved", the shipped caps
    in force), then the tick applies it: the counter's new cap refuses a deposit the
    shipped rules took, and the ledger's rules are the approved text's."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        approvals = approvals_of(bank)
        _customer, account_id = await funded_account(bank, 15_000 * CNY)  # under the old caps
        apply_at = clock.now + 2 * NS_PER_HOUR
        made = await approvals.request(
            op("product1"), "limits", "limits", limits_change(), apply_at, "tighter counter"
        )
        approved = await approvals.approve(op("admin1"), made["id"])
        assert approved["state"] == "approved"
        await anyio.sleep(1.5)  # a tick or two pass: not due yet
        assert approvals.get(made["id"])["state"] == "approved"
        await bank.payments.cash_deposit(Movement(COUNTER, "before", account_id, 15_000 * CNY))
        clock.now = apply_at + 1
        applied = await wait_state(approvals, made["id"], "applied")
        assert applied["version"] == 1 and applied["applied_ns"] >= apply_at
        engine = bank.core.running_engine()
        digest = approvals.current("limits")["digest"]
        assert engine.rules.digest == bank.core.rules.digest == digest
        refusal = await refusal_of(
            lambda: bank.payments.cash_deposit(Movement(COUNTER, "after", account_id, 15_000 * CNY))
        )
        assert refusal.refusal.ledger_code == R.EXCEEDS_CHANNEL_TRANSFER_CAP
        assert await balance(bank, account_id) == 30_000 * CNY
        versions = approvals.versions("limits")
        assert [v["version"] for v in versions] == [0, 1]
        assert versions[1]["request_id"] == made["id"] and "text" not in versions[1]


@run
async def test_pending_request_expires(tmp_path: Path) -> None:
    """A request nobody decides expires after `approval_expiry_s` (kept as "expired",
    audited as the system's act) and can no longer be approved."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        approvals = approvals_of(bank)
        made = await approvals.request(op("product1"), "limits", "", limits_change())
        clock.now += 86_400 * NS_PER_S + 1
        expired = await wait_state(approvals, made["id"], "expired")
        assert expired["checker"] == ""
        refusal = await refusal_of(lambda: approvals.approve(op("admin1"), made["id"]))
        assert refusal.refusal.code == Code.APPROVAL_NOT_PENDING
        assert refusal.refusal.extras["state"] == "expired"
        assert approvals.audit()[-1]["what"] == "expired"
        assert approvals.current("limits")["version"] == 0


@run
async def test_stale_base_version_fails_at_apply(tmp_path: Path) -> None:
    """A change approved against version 1 of a kind whose file declares its version
    fails with APPROVAL_STALE when, by its apply time, a new release shipped version 2
    (the restart put it in force); the request is kept as "failed" with the reason."""
    shipped = tmp_path / "shipped.toml"
    shipped.write_text("version = 1\n")
    installed: list[int] = []

    def register(bank: Bank) -> None:
        approvals_of(bank).register_parameter(
            "channels",
            parse=lambda text, source: int(text.split("=")[1]),
            install=installed.append,
            text=shipped.read_text,
            version_of=lambda value: value,
        )

    clock = Clock()
    data = tmp_path / "data"
    async with running_bank(data, clock, register) as bank:
        approvals = approvals_of(bank)
        change = {"text": "version = 2\n", "base_version": 1}
        made = await approvals.request(
            op("admin1"), "channels", "", change, clock.now + NS_PER_HOUR
        )
        await approvals.approve(op("admin2"), made["id"])
    shipped.write_text("version = 2\n")
    clock.now += 2 * NS_PER_HOUR
    async with running_bank(data, clock, register) as bank:
        approvals = approvals_of(bank)
        failed = await wait_state(approvals, made["id"], "failed")
        assert failed["result"]["code"] == "approval_stale"
        assert failed["result"]["base_version"] == 1 and failed["result"]["version"] == 2
        assert installed == []


# --- the operations ------------------------------------------------------------------------


@run
async def test_unlock_password_after_approval(tmp_path: Path) -> None:
    """A locked password (5 wrong in a row) stays locked until a supervisor approves a
    teller's unlock request; then the holder's own password works again."""
    async with running_bank(tmp_path, Clock()) as bank:
        approvals = approvals_of(bank)
        _customer, account_id = await funded_account(bank, 0)
        for _ in range(5):
            await refusal_of(lambda: bank.auth.verify_password(account_id, "000000"))
        refusal = await refusal_of(lambda: bank.auth.verify_password(account_id, PASSWORD))
        assert refusal.refusal.code == Code.PASSWORD_LOCKED
        made = await approvals.request(
            op("teller1"), "unlock_password", "", {"account_id": str(account_id)}
        )
        assert made["object"] == str(account_id)
        refusal = await refusal_of(lambda: bank.auth.verify_password(account_id, PASSWORD))
        assert refusal.refusal.code == Code.PASSWORD_LOCKED  # not before the approval
        applied = await approvals.approve(op("supervisor1"), made["id"], "ID seen")
        assert applied["state"] == "applied"
        assert applied["result"] == {"account_id": str(account_id), "failures_before": 5,
                                     "locked_before": True}  # fmt: skip
        await bank.auth.verify_password(account_id, PASSWORD)


@run
async def test_counter_reversal_above_threshold_after_approval(tmp_path: Path) -> None:
    """A teller cannot reverse a 100,000 CNY counter deposit directly; they ask, a
    supervisor approves, the deposit is reversed once (a second tick does not reverse it
    again)."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        approvals = approvals_of(bank)
        _customer, account_id = await funded_account(bank, 0)
        posted = await bank.payments.cash_deposit(
            Movement(COUNTER, "big", account_id, 100_000 * CNY)
        )
        transfer_id = int.from_bytes(posted.transfer_id_packed, "little")
        direct = await refusal_of(
            lambda: bank.payments.reversal(Movement(COUNTER, "rev", transfer_id, None))
        )
        assert direct.refusal.code == Code.APPROVAL_REQUIRED  # not at the teller's own hand
        assert direct.refusal.extras["kind"] == "reversal"
        assert await balance(bank, account_id) == 100_000 * CNY
        small = {"transfer_id": f"{transfer_id:032x}", "amount_minor": 10 * CNY}
        refusal = await refusal_of(lambda: approvals.request(op("teller1"), "reversal", "", small))
        assert refusal.refusal.code == Code.INVALID_FIELD  # below the threshold: no approval
        made = await approvals.request(
            op("teller1"), "reversal", "", {"transfer_id": f"{transfer_id:032x}"}
        )
        applied = await approvals.approve(op("supervisor1"), made["id"])
        assert applied["state"] == "applied", applied
        assert applied["result"]["amount_minor"] == 100_000 * CNY
        assert await balance(bank, account_id) == 0
        await approvals.on_tick(clock.now + NS_PER_HOUR)
        assert await balance(bank, account_id) == 0


@run
async def test_credit_limit_kept_across_restart(tmp_path: Path) -> None:
    """A teller's credit-limit request approved by a risk officer is a durable record:
    read after a restart."""
    async with running_bank(tmp_path, Clock()) as bank:
        approvals = approvals_of(bank)
        customer_id, _account = await funded_account(bank, 0)
        payload = {"customer_id": customer_id, "limit_minor": 200_000 * CNY}
        made = await approvals.request(op("teller1"), "credit_limit", "", payload)
        assert approvals.credit_limit(customer_id) == 0
        applied = await approvals.approve(op("risk1"), made["id"])
        assert applied["result"]["limit_before_minor"] == 0
        assert approvals.credit_limit(customer_id) == 200_000 * CNY
    async with running_bank(tmp_path, Clock()) as bank:
        approvals = approvals_of(bank)
        assert approvals.credit_limit(customer_id) == 200_000 * CNY
        assert approvals.get(made["id"])["state"] == "applied"


# --- crash and replay ------------------------------------------------------------------------


def start_child(data: Path) -> subprocess.Popen[str]:
    from tests.repo_paths import REPO_ROOT

    # The script imports `tests.*` at module level, before its __main__ puts the
    # repository on sys.path: the child finds them through PYTHONPATH.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
    )
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env,
    )  # fmt: skip


def test_applied_limits_survive_kill_9_and_replay(tmp_path: Path) -> None:
    """A child process applies an approved limits change, prints APPLIED once the call
    returned, and is SIGKILLed. Reopened, the journal's replay puts the approved rules
    in force before the engine starts: the request is "applied", the engine's rules are
    the approved version, and the lowered counter cap refuses a deposit the shipped
    rules take."""
    data = tmp_path / "data"
    process = start_child(data)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 60)
    assert ready, "the child reported nothing within 60 s"
    line = process.stdout.readline()
    if not line.startswith("APPLIED"):
        _out, err = process.communicate(timeout=60)
        raise AssertionError(f"child ended ({process.returncode}): {line} {err[-3000:]}")
    applied = orjson.loads(line.removeprefix("APPLIED "))
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL

    async def reopened() -> None:
        async with running_bank(data) as bank:
            approvals = approvals_of(bank)
            assert approvals.get(applied["id"])["state"] == "applied"
            current = approvals.current("limits")
            assert current["version"] == 1 and current["text"] == LOWERED_LIMITS
            assert bank.core.running_engine().rules.digest == current["digest"]
            account_id = applied["account_id"]
            refusal = await refusal_of(
                lambda: bank.payments.cash_deposit(
                    Movement(COUNTER, "after-crash", account_id, 15_000 * CNY)
                )
            )
            assert refusal.refusal.ledger_code == R.EXCEEDS_CHANNEL_TRANSFER_CAP
            assert await balance(bank, account_id) == 15_000 * CNY

    anyio.run(reopened)


async def _child(data: str) -> None:
    """Apply the lowered limits (product1 asks, admin1 approves), report, wait for the kill."""
    async with running_bank(Path(data)) as bank:
        approvals = approvals_of(bank)
        _customer, account_id = await funded_account(bank, 15_000 * CNY)
        made = await approvals.request(op("product1"), "limits", "", limits_change())
        applied = await approvals.approve(op("admin1"), made["id"])
        assert applied["state"] == "applied", applied
        sys.stdout.write(
            "APPLIED " + orjson.dumps({"id": made["id"], "account_id": account_id}).decode() + "\n"
        )
        sys.stdout.flush()
        await anyio.sleep_forever()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.umask(0o077)
    anyio.run(_child, sys.argv[1])
