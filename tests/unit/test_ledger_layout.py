"""The ledger owns its layout: record views and packers, the `Ledger` protocol, state sections.

Records are read by name through `ledger.records`, both twins satisfy the
`Ledger` protocol, and the state a snapshot or a store carries is the
sections `ledger.state` declares, dumped identically by both twins.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest

from core.entries import RULES_HEADER, Entry, EntryKind, apply_entry
from ledger import records
from ledger.constants import CLEARING_ID, INTERNAL_ACCOUNTS, LEDGER_CNY
from ledger.kernel import KernelLedger
from ledger.protocol import Ledger, LedgerLoader
from ledger.reference import Account, ReferenceLedger, Transfer
from ledger.state import (
    ACCOUNT_ROW_SIZE,
    LEGACY_SECTION_NAMES,
    SECTION_NAMES,
    SECTION_NAMES_BEFORE_QUOTAS,
    LedgerState,
    StateCorrupt,
    StateTooLarge,
)
from ledger.types import AccountKind, CreateTransferResult, TransferCode, TransferFlags
from tests.ledger_helpers import legacy_channel_table
from tests.unit.test_journal import (
    ACCOUNT_CAPACITY,
    CLASS_I,
    RULES,
    TRANSFER_CAPACITY,
    replayed,
    scenario,
)

# Both twins satisfy the protocols: mypy checks these (and ledger/protocol.py's own).
_KERNEL_IS_A_LEDGER: type[Ledger] = KernelLedger
_REFERENCE_IS_A_LEDGER: type[Ledger] = ReferenceLedger
_KERNEL_LOADS: LedgerLoader = KernelLedger
_REFERENCE_LOADS: LedgerLoader = ReferenceLedger


def protocol_members(protocol: type) -> set[str]:
    """The methods, properties and attributes a protocol declares."""
    names = {name for name in vars(protocol) if not name.startswith("_")}
    return names | set(typing.get_type_hints(protocol))


@pytest.mark.parametrize("twin", [KernelLedger, ReferenceLedger])
def test_both_twins_have_every_member_of_the_ledger_protocol(
    twin: type[KernelLedger] | type[ReferenceLedger],
) -> None:
    """Each twin, built empty, has every member the Ledger protocol declares (and the
    protocol is not vacuous), so code typed against `Ledger` runs on either twin."""
    members = protocol_members(Ledger)
    assert {"create_transfers", "dump_state", "record_at", "account_rows"} <= members
    ledger = twin(account_capacity=8, transfer_capacity=16)
    missing = sorted(name for name in members if not hasattr(ledger, name))
    assert missing == []
    assert isinstance(ledger, Ledger)
    assert callable(twin.load_state)


def test_transfer_packers_and_view_agree_with_the_reference_model() -> None:
    """`pack_transfer` writes each named field where the reference's `Transfer` reads it,
    the id-first fast variant gives the same bytes, and the view reads them back by name."""
    fields = {
        "id": (7 << 64) | 11,
        "debit_account_id": (1 << 100) | 3,
        "credit_account_id": 5,
        "amount": 12_345,
        "code": TransferCode.PAYMENT,
        "pending_id": (2 << 64) | 9,
        "timeout_s": 60,
        "flags": TransferFlags.PENDING,
        "channel": 4,
        "user_data": 99,
    }
    raw = records.pack_transfer(**fields)
    assert len(raw) == 128
    model = Transfer.unpack(raw)
    view = records.transfer_view(raw)
    for name, value in fields.items():
        assert getattr(model, name) == value == getattr(view, name), name
    assert view.ledger == model.ledger == LEDGER_CNY and view.result == view.timestamp == 0
    packed_id = raw[:16]
    fast = packed_id + records.pack_transfer_after_id(
        fields["debit_account_id"],
        fields["credit_account_id"],
        fields["amount"],
        fields["code"],
        fields["pending_id"],
        fields["timeout_s"],
        LEDGER_CNY,
        fields["flags"],
        fields["channel"],
        fields["user_data"],
    )
    assert fast == raw
    assert records.record_id(bytes(128) + raw, 128) == fields["id"]
    renumbered = records.transfer_view(records.with_ids(raw, id=42, pending_id=43))
    assert (renumbered.id, renumbered.pending_id, renumbered.amount) == (42, 43, 12_345)


@pytest.mark.parametrize("backend", ["kernel", "reference"])
def test_account_view_reads_what_the_ledger_stored(backend: str) -> None:
    """An account created from `pack_account_input` and read back with `account_view`
    has the id, ledger, kind, flags and product it was created with, on both twins."""
    ledger = replayed(scenario()[0], backend)
    raw = ledger.lookup_account(0x2000)
    assert raw is not None
    view = records.account_view(raw)
    assert view.id == 0x2000 and view.ledger == LEDGER_CNY
    assert view.kind == AccountKind.CLASS_II
    assert view.counters == tuple(ledger.account_counters(0x2000) or ())
    assert view.credits_posted > 0
    model = Account(id=1, ledger=LEDGER_CNY, kind=AccountKind.CLASS_I, flags=3, product=1)
    model.credits_posted, model.counters = 500, [1, 2, 3, 4]
    again = records.account_view(model.pack())
    assert (again.id, again.flags, again.credits_posted, again.counters) == (
        1,
        3,
        500,
        (1, 2, 3, 4),
    )
    inputs = records.account_input_view(
        records.pack_account_input(id=CLEARING_ID, kind=AccountKind.INTERNAL_CLEARING, product=7)
    )
    assert (inputs.id, inputs.kind, inputs.product, inputs.ledger) == (
        CLEARING_ID,
        AccountKind.INTERNAL_CLEARING,
        7,
        LEDGER_CNY,
    )
    assert dict(INTERNAL_ACCOUNTS)[CLEARING_ID] == AccountKind.INTERNAL_CLEARING


def test_both_twins_dump_the_same_sections_byte_for_byte() -> None:
    """After the same entries (holds, expiries, evictions, channel counters) the kernel
    and the reference dump identical state sections, in the declared order, apart from
    the kernel's own meta bookkeeping (masks, heap size) that no load reads."""
    before, _ = scenario()
    kernel, reference = replayed(before, "kernel"), replayed(before, "reference")
    dumped = [ledger.dump_state() for ledger in (kernel, reference)]
    for state in dumped:
        assert tuple(state.sections) == SECTION_NAMES
        state.check()
    for name in SECTION_NAMES:
        if name != "meta":
            assert dumped[0].section(name) == dumped[1].section(name), name
    for scalar in ("account_count", "log_tail", "log_count", "last_day"):
        assert getattr(dumped[0], scalar) == getattr(dumped[1], scalar), scalar
    assert dumped[0].log_tail > 0 and dumped[0].channels_live()
    rows = kernel.account_rows(range(kernel.account_count))
    assert rows == reference.account_rows(range(reference.account_count))
    assert all(len(row) == ACCOUNT_ROW_SIZE for _, row in rows)


@pytest.mark.parametrize("source", ["kernel", "reference"])
@pytest.mark.parametrize("target", [KernelLedger, ReferenceLedger])
def test_a_dumped_state_loads_into_either_twin_and_goes_on_identically(
    source: str, target: type[KernelLedger] | type[ReferenceLedger]
) -> None:
    """A state dumped by either twin loads into either twin (indexes, heap and channel
    counters rebuilt) with the same digest, and the loaded ledger then answers the
    scenario's second half exactly like a ledger that replayed everything."""
    before, after = scenario()
    original = replayed(before, source)
    state = LedgerState.from_bytes(
        {name: original.dump_state().section(name) for name in SECTION_NAMES}
    )
    loaded = target.load_state(
        state, account_capacity=ACCOUNT_CAPACITY, transfer_capacity=TRANSFER_CAPACITY
    )
    assert loaded.digest() == original.digest()
    full = replayed(before + after, "kernel")
    for entry in after:
        apply_entry(loaded, entry)
    assert loaded.digest() == full.digest()


def legacy_entries(entries: list[Entry]) -> list[Entry]:
    """`entries` as a build before per-code authorization journaled them: the SET_RULES
    payload carries the 4096-byte channel table of two caps a channel."""
    legacy = []
    for entry in entries:
        if entry.kind == EntryKind.SET_RULES:
            (products_size,) = RULES_HEADER.unpack_from(entry.payload)
            products = entry.payload[4 : 4 + products_size]
            payload = entry.payload[:4] + products + legacy_channel_table(RULES)
            entry = dataclasses.replace(entry, payload=payload)
        legacy.append(entry)
    return legacy


def log_failures_as_before(
    ledger: ReferenceLedger, t: Transfer, result: int, timestamp: int, day: int
) -> None:
    """`ReferenceLedger.failed_record` as a build before the failure ring had it: a failure
    that consumed its id is a record of the log window."""
    t.result = result
    t.timestamp = timestamp
    t.debit_slot = t.credit_slot = 0xFFFFFFFF
    t.business_day = day
    ledger.log_append(t)


@pytest.mark.parametrize("target", [KernelLedger, ReferenceLedger])
def test_a_journal_and_a_state_from_before_customer_numbers_still_load(
    target: type[KernelLedger] | type[ReferenceLedger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal and a snapshot written before per-code authorization and the failure ring
    (a 4096-byte channel table, no `owners`, `quotas` or `failed` section, failed transfers
    in the log window) still load: the old rule table is read as it behaved, every account
    has no customer, no channel a quota, and the digest recorded then is the one the state
    has now; the loaded ledger then answers the rest of the journal as the twins do."""
    before, after = (legacy_entries(half) for half in scenario())
    with monkeypatch.context() as patched:
        patched.setattr(ReferenceLedger, "failed_record", log_failures_as_before)
        original = replayed(before, "reference")
    dumped = original.dump_state()
    assert dumped.failed_count == 0 and dumped.section("failed") == b""
    assert dumped.section("owners") == bytes(len(dumped.section("owners")))
    assert dumped.section("quotas") == bytes(len(dumped.section("quotas")))
    sections = {name: dumped.section(name) for name in LEGACY_SECTION_NAMES}
    sections["channels"] = legacy_channel_table(RULES)
    loaded = target.load_state(
        LedgerState.from_bytes(sections),
        account_capacity=ACCOUNT_CAPACITY,
        transfer_capacity=TRANSFER_CAPACITY,
    )
    assert loaded.digest() == original.digest() == dumped.digest
    assert loaded.account_count > 0
    assert loaded.dump_state().section("owners") == bytes(8 * loaded.account_count)
    twin = ReferenceLedger if target is KernelLedger else KernelLedger
    other = twin.load_state(
        LedgerState.from_bytes(sections),
        account_capacity=ACCOUNT_CAPACITY,
        transfer_capacity=TRANSFER_CAPACITY,
    )
    for entry in after:
        apply_entry(loaded, entry)
        apply_entry(other, entry)
    assert loaded.digest() == other.digest()
    # Where the failures are remembered aside, the accounts are those of a full replay.
    full = replayed(before + after, "reference")
    count = full.account_count
    assert loaded.account_rows(range(count)) == full.account_rows(range(count))


def test_a_state_that_contradicts_itself_is_refused() -> None:
    """A missing section, a section of the wrong size, a digest that does not match the
    rebuilt ledger, and capacities too small are each refused with a reason."""
    ledger = replayed(scenario()[0], "kernel")
    sections = {name: ledger.dump_state().section(name) for name in SECTION_NAMES}
    without = {name: data for name, data in sections.items() if name != "chanlive"}
    with pytest.raises(StateCorrupt, match="expected"):
        LedgerState.from_bytes(without)
    with pytest.raises(StateCorrupt, match="pending section"):
        LedgerState.from_bytes(sections | {"pending": sections["pending"][:-16]})
    wrong = LedgerState.from_bytes(sections | {"digest": bytes(32)})
    with pytest.raises(StateCorrupt, match="digest"):
        KernelLedger.load_state(
            wrong, account_capacity=ACCOUNT_CAPACITY, transfer_capacity=TRANSFER_CAPACITY
        )
    with pytest.raises(StateCorrupt, match="digest"):
        ReferenceLedger.load_state(
            wrong, account_capacity=ACCOUNT_CAPACITY, transfer_capacity=TRANSFER_CAPACITY
        )
    state = LedgerState.from_bytes(sections)
    with pytest.raises(StateTooLarge, match="account capacity is 4"):
        KernelLedger.load_state(state, account_capacity=4, transfer_capacity=TRANSFER_CAPACITY)


def test_copy_state_from_copies_every_table_the_ledger_declares() -> None:
    """A kernel ledger copied with `copy_state_from` has the source's digest and replica
    digest, and goes on like the source (its indexes were copied, not left empty)."""
    before, after = scenario()
    source = replayed(before, "kernel")
    target = KernelLedger(account_capacity=ACCOUNT_CAPACITY, transfer_capacity=TRANSFER_CAPACITY)
    assert isinstance(source, KernelLedger)
    assert target.copy_state_from(source) > 0
    assert target.digest() == source.digest()
    assert target.replica_digest() == source.replica_digest()
    for entry in after:
        apply_entry(source, entry)
        apply_entry(target, entry)
    assert target.digest() == source.digest()


@pytest.mark.parametrize("target", [KernelLedger, ReferenceLedger])
def test_a_state_from_before_the_failure_ring_and_the_log_quotas_still_loads(
    target: type[KernelLedger] | type[ReferenceLedger],
) -> None:
    """A snapshot written before the failure ring and the log quotas has neither the
    `quotas` nor the `failed` section, and its failed transfers are in its log window.
    It loads into either twin with the digest it recorded (no quotas, an empty ring),
    and its failed id still answers a retry ID_ALREADY_FAILED."""
    old = replayed(scenario()[0][:4], "reference")  # rules, accounts, deposits: no failure
    assert isinstance(old, ReferenceLedger) and old.failed_count == 0 and old.log_count > 0
    request = records.pack_transfer(
        id=0x7777, debit_account_id=CLASS_I[0], credit_account_id=CLASS_I[1],
        amount=1 << 40, code=TransferCode.TRANSFER,
    )  # fmt: skip
    failed = Transfer.unpack(request)  # logged as the earlier build logged a failure
    failed.result = CreateTransferResult.EXCEEDS_CREDITS
    failed.timestamp = old.timestamp_last() + 1
    failed.debit_slot = failed.credit_slot = 0xFFFFFFFF
    failed.business_day = old.last_day
    old.log_append(failed)
    dumped = old.dump_state()
    state = LedgerState.from_bytes(
        {name: dumped.section(name) for name in SECTION_NAMES_BEFORE_QUOTAS}
    )
    loaded = target.load_state(
        state, account_capacity=ACCOUNT_CAPACITY, transfer_capacity=TRANSFER_CAPACITY
    )
    assert loaded.digest() == state.digest == old.digest()
    assert loaded.failed_count == 0
    assert loaded.channel_records(0) == (old.log_count - old.log_tail, 0)
    results, _, _ = loaded.create_transfers(request, old.timestamp_last() + 10, old.last_day)
    assert results[0] == CreateTransferResult.ID_ALREADY_FAILED
