"""Builders and comparison helpers shared by the ledger tests.

The differential tests hold the Cython kernel (`ledger.kernel.KernelLedger`) to
the plain-Python reference (`ledger.reference.ReferenceLedger`). When the two
disagree, a bare "digests differ" is useless, so `assert_same` decodes the
first differing record of the canonical state (an account, its limit counters,
a transfer log record or a channel counter) field by field, and
`assert_same_outputs` lists the transfers whose result, timestamp or balances
differ next to their decoded input.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger import records
from ledger.constants import LEDGER_CNY
from ledger.kernel import KernelLedger
from ledger.reference import ReferenceLedger, Transfer
from ledger.types import (
    ACCOUNT_SIZE,
    CHANNEL_COUNT,
    DEPOSIT_SIZE,
    PENDING_SIZE,
    TRANSFER_SIZE,
    AccountFlags,
    AccountKind,
    AccountStatus,
    AccountUpdateResult,
    CounterSpace,
    CreateAccountResult,
    CreateTransferResult,
    PendingState,
    TransferCode,
    TransferFlags,
    account_counter_key,
    customer_counter_key,
)
from limits.reference import (
    INFLOW_DAILY,
    INFLOW_YEARLY,
    OUTFLOW_DAILY,
    OUTFLOW_YEARLY,
    counters_effective,
)
from limits.rules import RuleSet, load_rules, parse_rules

Ledger = KernelLedger | ReferenceLedger
Outputs = tuple[bytearray, "array[int]", "array[int]"]

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_RULES: RuleSet = load_rules(REPO / "examples" / "limits.toml")

LEDGER_USD = 840
NS_PER_S = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_S

# Caps small enough that a handful of transfers reach them, so the differential
# and stateful tests hit every limit boundary instead of living far below them.
# Product and channel ids mirror examples/limits.toml where they overlap.
TIGHT_RULES_TOML = """
timezone = "Asia/Shanghai"

[products.class_i]
id = 1
kind = "class_i"

[products.class_ii]
id = 2
kind = "class_ii"

[products.class_iii]
id = 3
kind = "class_iii"

[products.savings_min_balance]
id = 4
kind = "savings"
balance_floor_minor = 1_000

# id 5 is deliberately left out: its row is all zeros (no caps, floor 0).

[products.loan]
id = 6
kind = "loan"
balance_floor_minor = -100_000_000

[products.internal]
id = 7
kind = "internal"
balance_floor_minor = -10_000_000_000_000_000

[products.class_ii_tight]
id = 8
kind = "class_ii"
transfer_cap_minor = 15_000
inflow_daily_minor = 30_000
inflow_yearly_minor = 70_000
outflow_daily_minor = 20_000
outflow_yearly_minor = 50_000

[products.class_iii_tight]
id = 9
kind = "class_iii"
balance_cap_minor = 25_000
inflow_daily_minor = 20_000
inflow_yearly_minor = 45_000
outflow_daily_minor = 10_000
outflow_yearly_minor = 25_000

[products.class_i_overdraft]
id = 10
kind = "class_i"
balance_floor_minor = -50_000
transfer_cap_minor = 40_000

[channels.wechat]
id = 1
kind = "wechat"
transfer_cap_minor = 2_000_000
daily_cap_minor = 5_000_000
transfer_codes = [
  "transfer", "payment", "cash_deposit", "cash_withdrawal", "topup_bound", "withdraw_bound",
  "interest", "reversal", "wealth", "loan_disbursement", "loan_repayment",
  "external_transfer_out", "external_transfer_in", "fixed_deposit",
]

[channels.counter]
id = 3
kind = "counter"
inflow_daily_cap_minor = 40_000
transfer_codes = [
  "transfer", "payment", "cash_deposit", "cash_withdrawal", "topup_bound", "withdraw_bound",
  "fee", "interest", "reversal", "wealth", "loan_disbursement", "loan_repayment",
  "external_transfer_out", "external_transfer_in", "fixed_deposit",
]

[channels.atm]
id = 4
kind = "atm"
transfer_cap_minor = 20_000
daily_cap_minor = 35_000
transfer_codes = [
  "transfer", "payment", "cash_deposit", "cash_withdrawal", "topup_bound", "withdraw_bound",
  "reversal", "external_transfer_out", "external_transfer_in",
]

[channels.batch]
id = 6
kind = "internal"

[channels.tight_app]
id = 7
kind = "app"
transfer_cap_minor = 12_000
daily_cap_minor = 25_000
inflow_daily_cap_minor = 18_000
transfer_codes = [
  "transfer", "payment", "cash_deposit", "cash_withdrawal", "topup_bound", "withdraw_bound",
  "fee", "interest", "reversal", "external_transfer_out", "external_transfer_in", "settlement",
]

[channels.tight_daily]
id = 8
kind = "open_api"
daily_cap_minor = 8_000
inflow_daily_cap_minor = 9_000
transfer_codes = [
  "transfer", "payment", "cash_deposit", "cash_withdrawal", "topup_bound", "withdraw_bound",
  "reversal", "external_transfer_out", "external_transfer_in",
]

# The funding account takes every code (the generators fund customers from it); the
# settlement and cash accounts' floors are reached by the huge transfers.
[internal_accounts.clearing]
balance_floor_minor = -10_000_000_000_000_000
debit_codes = [
  "transfer", "payment", "cash_deposit", "cash_withdrawal", "topup_bound", "withdraw_bound",
  "fee", "interest", "reversal", "wealth", "loan_disbursement", "loan_repayment",
  "external_transfer_out", "external_transfer_in", "fixed_deposit", "settlement",
]
credit_codes = [
  "transfer", "payment", "cash_deposit", "cash_withdrawal", "topup_bound", "withdraw_bound",
  "fee", "interest", "reversal", "wealth", "loan_disbursement", "loan_repayment",
  "external_transfer_out", "external_transfer_in", "fixed_deposit", "settlement",
]

[internal_accounts.cash]
balance_floor_minor = -3_000_000
debit_codes = ["cash_deposit", "interest", "transfer", "payment"]

[internal_accounts.settlement]
balance_floor_minor = -7_000_000

[customers]
daily_outflow_cap_minor = 15_000
strong_auth_daily_minor = 22_000
"""
TIGHT_RULES: RuleSet = parse_rules(TIGHT_RULES_TOML, "tests/ledger_helpers.py:TIGHT_RULES_TOML")

# Product rows as the kernel reads them (see limits.rules.RuleSet.product_table).
PRODUCT_ROW = struct.Struct("<8q")
CHANNEL_ROW = struct.Struct("<qqqII")
LEGACY_CHANNEL_ROW = struct.Struct("<qq")


def legacy_channel_table(rules: RuleSet) -> bytes:
    """The rule table as builds before per-code authorization packed it (two caps a
    channel): the ledger reads it as those builds behaved (every code allowed everywhere,
    no floors on internal kinds, no credit, customer or strong-authentication counters)."""
    table = bytearray(256 * LEGACY_CHANNEL_ROW.size)
    for channel_id, channel in rules.channels.items():
        LEGACY_CHANNEL_ROW.pack_into(table, channel_id * LEGACY_CHANNEL_ROW.size,
                                     channel.transfer_cap_minor, channel.daily_cap_minor)
    return bytes(table)


@dataclass(frozen=True, slots=True)
class ProductCaps:
    balance_floor: int
    transfer_cap: int
    balance_cap: int
    inflow_daily: int
    inflow_yearly: int
    outflow_daily: int
    outflow_yearly: int


_TABLES: dict[int, tuple[RuleSet, bytes, bytes]] = {}


def rule_tables(rules: RuleSet) -> tuple[bytes, bytes]:
    """(product_table, channel_table) of `rules`, packed once per rule set."""
    entry = _TABLES.get(id(rules))
    if entry is None or entry[0] is not rules:
        entry = (rules, bytes(rules.product_table()), bytes(rules.channel_table()))
        _TABLES[id(rules)] = entry
    return entry[1], entry[2]


def product_caps(rules: RuleSet, product: int) -> ProductCaps:
    """The row the kernel reads for `product` (all zeros for an unused id)."""
    table, _ = rule_tables(rules)
    if product * PRODUCT_ROW.size >= len(table):
        return ProductCaps(0, 0, 0, 0, 0, 0, 0)
    return ProductCaps(*PRODUCT_ROW.unpack_from(table, product * PRODUCT_ROW.size)[:7])


def channel_caps(rules: RuleSet, channel: int) -> tuple[int, int]:
    """(transfer_cap, daily_cap) of `channel`; 0 means none."""
    _, table = rule_tables(rules)
    transfer_cap, daily_cap, _, _, _ = CHANNEL_ROW.unpack_from(table, channel * CHANNEL_ROW.size)
    return transfer_cap, daily_cap


# --- builders -------------------------------------------------------------------


def account_input(
    account_id: int,
    kind: int,
    *,
    flags: int = 0,
    product: int = 0,
    bound_id: int = 0,
    ledger: int = LEDGER_CNY,
    status: int = AccountStatus.ACTIVE,
    customer: int = 0,
    reserved: bytes = b"",
) -> bytes:
    """One 64-byte account-creation record (ledger.types.ACCOUNT_INPUT_STRUCT).

    `reserved` overwrites the start of the 16 reserved bytes, to build inputs
    that must be refused with RESERVED_FIELD.
    """
    record = bytearray(
        records.pack_account_input(
            id=account_id, kind=kind, product=product, flags=flags, bound_id=bound_id,
            ledger=ledger, status=status, customer=customer,
        )
    )
    assert len(reserved) <= 16
    record[48 : 48 + len(reserved)] = reserved
    return bytes(record)


def transfer_record(
    transfer_id: int,
    debit_account_id: int,
    credit_account_id: int,
    amount: int,
    *,
    code: int = TransferCode.TRANSFER,
    flags: int = 0,
    pending_id: int = 0,
    timeout_s: int = 0,
    ledger: int = LEDGER_CNY,
    channel: int = 0,
    user_data: int = 0,
    **log_fields: int,
) -> Transfer:
    """A caller's transfer as a `Transfer`; `log_fields` set fields that must be zero on input."""
    fields: dict[str, Any] = {
        "timestamp": 0, "result": 0, "debit_slot": 0, "credit_slot": 0, "business_day": 0,
        "counted": 0, "state": 0, "amount_posted": 0, "amount_reversed": 0,
    }
    unknown = set(log_fields) - set(fields)
    assert not unknown, unknown
    fields.update(log_fields)
    return Transfer(
        id=transfer_id, debit_account_id=debit_account_id, credit_account_id=credit_account_id,
        pending_id=pending_id, amount=amount, timeout_s=timeout_s, ledger=ledger, code=code,
        flags=flags, channel=channel, user_data=user_data, **fields,
    )


def transfer(
    transfer_id: int, debit_account_id: int, credit_account_id: int, amount: int, **fields: Any
) -> bytes:
    """One packed 128-byte transfer; keyword fields as in `transfer_record`."""
    record = transfer_record(transfer_id, debit_account_id, credit_account_id, amount, **fields)
    return record.pack()


def batch_of(transfers: Iterable[bytes | Transfer]) -> bytes:
    return b"".join(t.pack() if isinstance(t, Transfer) else t for t in transfers)


def make_ledger(
    backend: str,
    rules: RuleSet = EXAMPLE_RULES,
    *,
    account_capacity: int = 64,
    transfer_capacity: int = 1024,
    legacy: bool = False,
) -> Ledger:
    """An empty ledger on `backend` ("kernel" or "reference") with `rules` installed
    (`legacy`: as a rule table of the builds before per-code authorization)."""
    ledger: Ledger
    if backend == "kernel":
        ledger = KernelLedger(account_capacity=account_capacity,
                              transfer_capacity=transfer_capacity)
    elif backend == "reference":
        ledger = ReferenceLedger(
            account_capacity=account_capacity, transfer_capacity=transfer_capacity
        )
    else:
        raise ValueError(backend)
    products, channels = rule_tables(rules)
    ledger.set_rules(products, legacy_channel_table(rules) if legacy else channels)
    return ledger


def both(
    rules: RuleSet = EXAMPLE_RULES,
    *,
    account_capacity: int = 64,
    transfer_capacity: int = 1024,
    legacy: bool = False,
) -> tuple[KernelLedger, ReferenceLedger]:
    """A (kernel, reference) pair with the same rules and capacities.

    `transfer_capacity` should be a power of two: the kernel rounds its log
    window up to one, the reference does not, and the tests want both to
    refuse a full log at the same point.
    """
    assert transfer_capacity & (transfer_capacity - 1) == 0, transfer_capacity
    kernel = make_ledger("kernel", rules, account_capacity=account_capacity,
                         transfer_capacity=transfer_capacity, legacy=legacy)
    reference = make_ledger("reference", rules, account_capacity=account_capacity,
                            transfer_capacity=transfer_capacity, legacy=legacy)
    assert isinstance(kernel, KernelLedger) and isinstance(reference, ReferenceLedger)
    return kernel, reference


# --- reading state ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AccountView:
    """An account record (`ledger.records.AccountView`'s fields) plus its pending side-table row."""

    record: records.AccountView
    debits_pending: int = 0
    credits_pending: int = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.record, name)

    @property
    def balance(self) -> int:
        """Posted balance, as the kernel reports it: credits_posted - debits_posted."""
        return self.record.credits_posted - self.record.debits_posted

    @property
    def available(self) -> int:
        """What a debit may still take before the floor check (pending debits held)."""
        return self.balance - self.debits_pending

    @classmethod
    def unpack(cls, record: bytes, pending: tuple[int, int] = (0, 0)) -> AccountView:
        return cls(records.account_view(record), *pending)


def account_pending(ledger: Ledger, account_id: int) -> tuple[int, int]:
    """(debits_pending, credits_pending) of an account, from the pending side table.

    The 64-byte account record does not carry them; each backend keeps the
    side table its own way, so this reads each one directly.
    """
    if isinstance(ledger, ReferenceLedger):
        account = ledger.accounts[ledger.account_index[account_id]]
        return account.debits_pending, account.credits_pending
    slot = ledger.account_slot(account_id)
    assert slot >= 0, account_id
    row = records.pending_view(ledger.pending, slot * PENDING_SIZE)
    return row.debits_pending, row.credits_pending


def account_view(ledger: Ledger, account_id: int) -> AccountView:
    """The account with its pending totals; the account must exist."""
    record = ledger.lookup_account(account_id)
    assert record is not None, f"account {account_id} not found"
    return AccountView.unpack(record, account_pending(ledger, account_id))


def find_account(ledger: Ledger, account_id: int) -> AccountView | None:
    record = ledger.lookup_account(account_id)
    if record is None:
        return None
    return AccountView.unpack(record, account_pending(ledger, account_id))


def remaining_limits(
    ledger: Ledger, rules: RuleSet, debit: int, credit: int, channel: int, day: int
) -> list[int]:
    """What each limit on a (debit, credit, channel) transfer still allows on `day`.

    Funds above the floor, transfer caps, the buckets' daily and yearly
    remainders, the channel's caps and the credit's balance-cap headroom: the
    amounts at which a transfer flips between OK and a limit code. Only the
    positive ones are returned.
    """
    limits: list[int] = []
    debit_view = find_account(ledger, debit)
    credit_view = find_account(ledger, credit)
    if debit_view is not None:
        view = debit_view
        caps = product_caps(rules, view.product)
        if view.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS:
            limits.append(view.available - caps.balance_floor)
        if caps.transfer_cap:
            limits.append(caps.transfer_cap)
        counters = counters_effective(list(ledger.account_counters(debit) or (0, 0, 0, 0)),
                                      view.counters_day, day)
        if caps.outflow_daily:
            limits.append(caps.outflow_daily - counters[OUTFLOW_DAILY])
            limits.append(caps.outflow_yearly - counters[OUTFLOW_YEARLY])
        channel_transfer_cap, channel_daily_cap = channel_caps(rules, channel)
        if channel_transfer_cap:
            limits.append(channel_transfer_cap)
        if channel_daily_cap:
            limits.append(channel_daily_cap - ledger.channel_used(debit, channel, day))
        customer = ledger.account_customer(debit) or 0
        if rules.customers.daily_outflow_cap_minor and customer:
            key = customer_counter_key(CounterSpace.CUSTOMER_DEBIT, customer)
            limits.append(rules.customers.daily_outflow_cap_minor - ledger.counter_used(key, day))
        if rules.customers.strong_auth_daily_minor:
            key = (customer_counter_key(CounterSpace.STRONG_CUSTOMER, customer) if customer else
                   account_counter_key(CounterSpace.STRONG_ACCOUNT, slot_of(ledger, debit), 0))
            limits.append(rules.customers.strong_auth_daily_minor - ledger.counter_used(key, day))
    if credit_view is not None:
        view = credit_view
        caps = product_caps(rules, view.product)
        counters = counters_effective(list(ledger.account_counters(credit) or (0, 0, 0, 0)),
                                      view.counters_day, day)
        if caps.inflow_daily:
            limits.append(caps.inflow_daily - counters[INFLOW_DAILY])
            limits.append(caps.inflow_yearly - counters[INFLOW_YEARLY])
        rule = rules.channels.get(channel)
        if rule is not None and rule.inflow_daily_cap_minor:
            key = account_counter_key(CounterSpace.CHANNEL_CREDIT, slot_of(ledger, credit), channel)
            limits.append(rule.inflow_daily_cap_minor - ledger.counter_used(key, day))
        if caps.balance_cap:
            limits.append(caps.balance_cap - view.credits_posted - view.credits_pending
                          + view.debits_posted)
    return [limit for limit in limits if limit > 0]


def slot_of(ledger: Ledger, account_id: int) -> int:
    if isinstance(ledger, ReferenceLedger):
        return ledger.account_index[account_id]
    return ledger.account_slot(account_id)


def transfer_view(ledger: Ledger, transfer_id: int) -> Transfer | None:
    record = ledger.lookup_transfer(transfer_id)
    return None if record is None else Transfer.unpack(record)


# --- decoding for failure messages --------------------------------------------------


def _name(enum_type: Any, value: int) -> str:
    try:
        return f"{enum_type(value).name}({value})"
    except ValueError:
        return f"?({value})"


def decode_account(record: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = records.account_view(record)._asdict()
    decoded["kind"] = _name(AccountKind, decoded["kind"])
    decoded["status"] = _name(AccountStatus, decoded["status"])
    decoded["flags"] = f"{AccountFlags(decoded['flags'] & 0x1F)!r} raw={decoded['flags']:#x}"
    return decoded


def decode_pending(record: bytes) -> dict[str, Any]:
    return records.pending_view(record)._asdict()


def decode_transfer(record: bytes | Transfer) -> dict[str, Any]:
    t = record if isinstance(record, Transfer) else Transfer.unpack(record)
    decoded = {name: getattr(t, name) for name in Transfer.__slots__}  # type: ignore[attr-defined]
    decoded["result"] = _name(CreateTransferResult, t.result)
    decoded["code"] = _name(TransferCode, t.code)
    decoded["state"] = _name(PendingState, t.state)
    decoded["flags"] = f"{TransferFlags(t.flags & 0x0F)!r} raw={t.flags:#x}"
    return decoded


_CHANNEL_ENTRY = struct.Struct("<IBq")


def canonical_records(ledger: Ledger) -> list[tuple[str, bytes]]:
    """The digest's input split back into labelled records."""
    blob = b"".join(bytes(chunk) for chunk in ledger.canonical_chunks())
    account_count, log_tail, log_count, _ = struct.unpack_from("<qqqq", blob, 0)
    records = [("header", blob[:32])]
    offset = 32
    for slot in range(account_count):
        records.append((f"account slot {slot}", blob[offset : offset + ACCOUNT_SIZE]))
        offset += ACCOUNT_SIZE
    for slot in range(account_count):
        records.append((f"pending slot {slot}", blob[offset : offset + PENDING_SIZE]))
        offset += PENDING_SIZE
    for seq in range(log_tail, log_count):
        records.append((f"transfer log seq {seq}", blob[offset : offset + TRANSFER_SIZE]))
        offset += TRANSFER_SIZE
    for index in range(len(ledger.channels_live())):
        records.append((f"channel counter #{index}", blob[offset : offset + _CHANNEL_ENTRY.size]))
        offset += _CHANNEL_ENTRY.size
    if ledger.failed_count:  # the failure ring, once it has held a failure
        failed_tail, failed_count = struct.unpack_from("<qq", blob, offset)
        records.append(("failure ring header", blob[offset : offset + 16]))
        offset += 16
        for seq in range(failed_tail, failed_count):
            records.append((f"failure ring seq {seq}", blob[offset : offset + TRANSFER_SIZE]))
            offset += TRANSFER_SIZE
    if offset < len(blob):  # the deposit table, once a row or accrued_day is not zero
        records.append(("deposits accrued_day", blob[offset : offset + 8]))
        offset += 8
        for slot in range(account_count):
            records.append((f"deposit row slot {slot}", blob[offset : offset + DEPOSIT_SIZE]))
            offset += DEPOSIT_SIZE
    return records


def decode_record(label: str, record: bytes) -> dict[str, Any]:
    if label == "header":
        names = ("account_count", "log_tail", "log_count", "last_day")
        return dict(zip(names, struct.unpack("<qqqq", record), strict=True))
    if label.startswith("account") and len(record) == ACCOUNT_SIZE:
        return decode_account(record)
    if label.startswith("pending") and len(record) == PENDING_SIZE:
        return decode_pending(record)
    if label.startswith(("transfer", "failure ring seq")) and len(record) == TRANSFER_SIZE:
        return decode_transfer(record)
    if label.startswith("channel") and len(record) == _CHANNEL_ENTRY.size:
        return dict(zip(("slot", "channel", "used"), _CHANNEL_ENTRY.unpack(record), strict=True))
    return {"raw": record.hex()}


def _field_diff(left: dict[str, Any], right: dict[str, Any]) -> str:
    keys = list(dict.fromkeys([*left, *right]))
    return ", ".join(
        f"{key}: kernel={left.get(key)!r} reference={right.get(key)!r}"
        for key in keys if left.get(key) != right.get(key)
    )


def state_difference(kernel: Ledger, reference: Ledger) -> str | None:
    """None if the canonical states are equal, else a readable account of the first difference."""
    if kernel.digest() == reference.digest():
        return None
    left = canonical_records(kernel)
    right = canonical_records(reference)
    lines = ["kernel and reference states differ"]
    if left[0] != right[0]:
        lines.append(f"  header: {_field_diff(decode_record(*left[0]), decode_record(*right[0]))}")
    for (label_left, record_left), (label_right, record_right) in zip(left, right, strict=False):
        if label_left == "header" or (label_left == label_right and record_left == record_right):
            continue
        decoded_left = decode_record(label_left, record_left)
        decoded_right = decode_record(label_right, record_right)
        lines.append(f"  first differing record: kernel {label_left} / reference {label_right}")
        lines.append(f"    differing fields: {_field_diff(decoded_left, decoded_right)}")
        lines.append(f"    kernel:    {decoded_left}")
        lines.append(f"    reference: {decoded_right}")
        break
    else:
        if len(left) != len(right):
            longer, name = (left, "kernel") if len(left) > len(right) else (right, "reference")
            label, record = longer[min(len(left), len(right))]
            lines.append(f"  only the {name} has {label}: {decode_record(label, record)}")
    return "\n".join(lines)


def assert_same(kernel: Ledger, reference: Ledger) -> None:
    """The two ledgers' digests are equal; on mismatch, show the first differing record."""
    difference = state_difference(kernel, reference)
    assert difference is None, difference


def assert_same_outputs(
    kernel_out: Outputs, reference_out: Outputs, batch: bytes | Sequence[bytes]
) -> None:
    """Results, timestamps and balances agree item by item; on mismatch, list the items."""
    data = batch if isinstance(batch, bytes | bytearray) else b"".join(batch)
    k_results, k_timestamps, k_balances = kernel_out
    r_results, r_timestamps, r_balances = reference_out
    count = len(data) // TRANSFER_SIZE
    assert len(k_results) == len(r_results) == count
    lines = []
    for index in range(count):
        k = (k_results[index], k_timestamps[index], *k_balances[2 * index : 2 * index + 2])
        r = (r_results[index], r_timestamps[index], *r_balances[2 * index : 2 * index + 2])
        if k != r:
            t = Transfer.unpack(data, index * TRANSFER_SIZE)
            lines.append(
                f"  [{index}] kernel result={_name(CreateTransferResult, k[0])} ts={k[1]} "
                f"balances={k[2:]} | reference result={_name(CreateTransferResult, r[0])} "
                f"ts={r[1]} balances={r[2:]}\n      input: {decode_transfer(t)}"
            )
    assert not lines, "kernel and reference outputs differ:\n" + "\n".join(lines)


class Twin:
    """Runs every operation on the kernel and the reference and checks they agree.

    Outputs are compared after every call and the full state (digest) after
    every mutating call, so a divergence is reported at the first operation
    that causes it.
    """

    def __init__(self, kernel: KernelLedger, reference: ReferenceLedger) -> None:
        self.kernel = kernel
        self.reference = reference

    def create_accounts(self, batch: bytes) -> bytes:
        k = bytes(self.kernel.create_accounts(batch))
        r = bytes(self.reference.create_accounts(batch))
        assert k == r, (
            "create_accounts results differ: "
            f"kernel={[_name(CreateAccountResult, x) for x in k]} "
            f"reference={[_name(CreateAccountResult, x) for x in r]}"
        )
        assert_same(self.kernel, self.reference)
        return r

    def create_transfers(self, batch: bytes, timestamp_first: int, business_day: int) -> Outputs:
        k = self.kernel.create_transfers(batch, timestamp_first, business_day)
        r = self.reference.create_transfers(batch, timestamp_first, business_day)
        assert_same_outputs(k, r, batch)
        assert_same(self.kernel, self.reference)
        return r

    def expire_pending(self, now_ns: int, business_day: int) -> int:
        k = self.kernel.expire_pending(now_ns, business_day)
        r = self.reference.expire_pending(now_ns, business_day)
        assert k == r, f"expire_pending: kernel expired {k}, reference {r}"
        assert_same(self.kernel, self.reference)
        return r

    def evict(self, before_ns: int, count_max: int) -> int:
        k = self.kernel.evict(before_ns, count_max)
        r = self.reference.evict(before_ns, count_max)
        assert k == r, f"evict: kernel evicted {k}, reference {r}"
        assert_same(self.kernel, self.reference)
        return r

    def evict_failed(self, before_ns: int, count_max: int) -> int:
        k = self.kernel.evict_failed(before_ns, count_max)
        r = self.reference.evict_failed(before_ns, count_max)
        assert k == r, f"evict_failed: kernel evicted {k}, reference {r}"
        assert_same(self.kernel, self.reference)
        return r

    def set_log_quotas(self, rules: RuleSet, log_quota_table: bytes) -> None:
        """Install `rules` with this log quota table (u16 permille per channel) on both; the
        rule table installed stays (a legacy one too: `make_ledger(legacy=True)`)."""
        products, _ = rule_tables(rules)
        channels = bytes(self.kernel.channels)
        assert channels == self.reference.rules_table
        self.kernel.set_rules(products, channels, log_quota_table)
        self.reference.set_rules(products, channels, log_quota_table)

    def update_account(self, account_id: int, status: int, flags: int) -> int:
        k = self.kernel.update_account(account_id, status, flags)
        r = self.reference.update_account(account_id, status, flags)
        assert k == r, (
            f"update_account({account_id}, {status}, {flags:#x}): "
            f"kernel={_name(AccountUpdateResult, k)} reference={_name(AccountUpdateResult, r)}"
        )
        assert_same(self.kernel, self.reference)
        return r

    def assert_reads_agree(self, account_ids: Iterable[int], transfer_ids: Iterable[int],
                           day: int) -> None:
        """The read API (not only the digest) answers the same on both backends."""
        for account_id in account_ids:
            assert self.kernel.lookup_account(account_id) == self.reference.lookup_account(
                account_id), account_id
            assert self.kernel.account_counters(account_id) == self.reference.account_counters(
                account_id), account_id
            for channel in (0, 1, 4, 7, 8):
                assert self.kernel.channel_used(account_id, channel, day) == (
                    self.reference.channel_used(account_id, channel, day)), (account_id, channel)
        for transfer_id in transfer_ids:
            assert self.kernel.lookup_transfer(transfer_id) == self.reference.lookup_transfer(
                transfer_id), transfer_id
        for channel in range(CHANNEL_COUNT):
            assert self.kernel.channel_records(channel) == self.reference.channel_records(
                channel), channel
        assert self.kernel.failed_timestamp_oldest() == self.reference.failed_timestamp_oldest()
        assert self.kernel.log_timestamp_oldest() == self.reference.log_timestamp_oldest()
