"""The HTTP face's pieces in isolation: identity checks, signing, registry, problems, state."""

from __future__ import annotations

import datetime
from pathlib import Path

import anyio
import orjson
import pytest

from channels.http import signing
from channels.http.openapi import openapi_document
from channels.http.problems import transfer_problem, transfer_status
from channels.http.routes import ROUTES
from channels.registry import OPERATIONS, RegistryError, load_registry, parse_registry
from core.services import identity, passwords, policy
from core.services.kyc import id_structure_reasons
from core.services.records import TransferIds
from core.services.server_secrets import DEVELOPMENT
from core.services.state import (
    LEGACY_STATE_FILE,
    Password,
    StateError,
    StateStore,
    kyc_verified,
    legacy_records_to_import,
    read_legacy_file,
)
from ledger.types import CreateTransferResult
from limits.rules import load_rules

RULES = load_rules("examples/limits.toml")


def test_resident_id_check_digit() -> None:
    """The GB 11643 sample ID validates; any other last character fails with the MOD 11-2 reason."""
    assert identity.resident_id_check_character("11010519491231002") == "X"
    parsed = identity.parse_resident_id("11010519491231002X")
    assert not isinstance(parsed, str)
    assert parsed.birth_date == datetime.date(1949, 12, 31) and parsed.sex == "female"
    for last in "0123456789":
        assert "MOD 11-2" in str(identity.parse_resident_id("11010519491231002" + last))
    assert "calendar date" in str(identity.parse_resident_id("110105194902300021"))
    assert "region" in str(identity.parse_resident_id("990105194912310021"))
    assert "18 characters" in str(identity.parse_resident_id("11010519491231002x"))


def test_luhn_and_masks() -> None:
    """Luhn accepts the classic test numbers and rejects a changed digit; masks keep 6+4 digits."""
    assert identity.luhn_valid("4111111111111111") and not identity.luhn_valid("4111111111111112")
    partial = "622848000000000001"
    assert identity.luhn_valid(partial + identity.luhn_check_digit(partial))
    assert identity.mask_card("6228480000000000019") == "622848*********0019"
    assert identity.mask_resident_id("11010519491231002X") == "110**************X"
    assert identity.mask_mobile("13800138000") == "138****8000"


def test_id_structure_step_and_the_old_builtin_verdict() -> None:
    """The ID structure step passes an adult and fails a minor with the reason; a customer
    record carrying the earlier built-in verdict (`verified` on local checks alone, the
    identity database, issuer and SMS listed as not checked) is not verified."""
    adult = identity.parse_resident_id("11010519491231002X")
    assert not isinstance(adult, str)
    assert id_structure_reasons(adult, datetime.date(2026, 1, 1), 16) == []
    first = "110105" + "20200101" + "001"
    minor = identity.parse_resident_id(first + identity.resident_id_check_character(first))
    assert not isinstance(minor, str)
    (reason,) = id_structure_reasons(minor, datetime.date(2026, 1, 1), 16)
    assert "the holder is 6" in reason
    old_verdict = {
        "status": "verified",
        "checks": ["resident_id_check_digit", "resident_id_region", "resident_id_birth_date"],
        "reasons": [],
        "not_checked": ["identity_database_match", "issuer_card_verification", "sms_code"],
        "verifier": "builtin",
    }
    assert not kyc_verified(old_verdict)


def test_signing_round_trip_and_parse_errors() -> None:
    """A header made by the client parses back; tampering with any field breaks verification."""
    header = signing.authorization_header(
        "app",
        "k1",
        b"s" * 32,
        "POST",
        "/v1/x",
        "a=1",
        b"{}",
        idempotency_key="key",
        timestamp=100,
        nonce="abcdefgh",
    )
    credentials = signing.parse_authorization(header)
    assert not isinstance(credentials, str)
    digest = __import__("hashlib").sha256(b"{}").hexdigest()
    message = signing.string_to_sign(
        "app", "k1", "POST", "/v1/x", "a=1", "100", "abcdefgh", "key", "", digest
    )
    assert signing.verify(b"s" * 32, message, credentials.signature)
    tampered = signing.string_to_sign(
        "app", "k1", "POST", "/v1/x", "a=2", "100", "abcdefgh", "key", "", digest
    )
    assert not signing.verify(b"s" * 32, tampered, credentials.signature)
    assert isinstance(signing.parse_authorization("Basic abc"), str)
    assert isinstance(signing.parse_authorization(header + ',extra="1"'), str)


def test_registry_validation_lists_every_problem(tmp_path: Path) -> None:
    """The example registry loads ("*" is every operation the kind is offered); a bad one
    names each problem at once, an operation the channel's kind is not offered included."""
    registry = load_registry("examples/channels.toml", RULES)
    assert registry.channels["bank"].operations == frozenset(
        op for op in OPERATIONS if policy.offered(op, "internal")
    )
    assert "read_account" in registry.channels["bank"].operations
    assert "batch" not in registry.channels["open_api"].operations
    assert registry.channels["open_api"].operations == {
        "incoming_transfer", "verify_account", "incoming_credits", "payment_return"
    }  # fmt: skip
    assert len(registry.channels["app"].secrets) == 2
    document = {
        "channels": {
            "wechat": {
                "id": 1,
                "kind": "app",
                "operations": ["fly"],
                "secrets": [{"key_id": "k", "secret": "short"}],
            },
            "ghost": {
                "id": 99,
                "kind": "atm",
                "secrets": [{"key_id": "k", "secret": "x" * 40}],
                "colour": 1,
            },
            "open_api": {
                "id": 5,
                "kind": "open_api",
                "operations": ["incoming_transfer", "read_account"],
                "secrets": [{"key_id": "k", "secret": "x" * 40}],
            },
        }
    }
    with pytest.raises(RegistryError) as error:
        parse_registry(document, "test.toml", RULES)
    text = str(error.value)
    for fragment in (
        "unknown operation 'fly'",
        "at least 32 bytes",
        "kind 'wechat'",
        "not in the limit rules",
        "colour",
        "'read_account' is not offered at open_api channels",
    ):
        assert fragment in text


def test_every_result_code_has_a_stable_problem() -> None:
    """Each ledger code maps to a 4xx and to a type URI made from its name."""
    for code in CreateTransferResult:
        if code in (CreateTransferResult.OK, CreateTransferResult.EXISTS):
            continue
        problem = transfer_problem(code)
        assert 400 <= problem.status < 500 and problem.status == transfer_status(code)
        body = problem.body()
        assert body["type"].endswith("/" + code.name.lower().replace("_", "-"))
        assert body["ledger_result"] == {"code": int(code), "name": code.name.lower()}
    assert transfer_problem(CreateTransferResult.DEBIT_ACCOUNT_NOT_FOUND).status == 404
    assert transfer_problem(CreateTransferResult.PENDING_TRANSFER_ALREADY_POSTED).status == 409
    assert transfer_problem(CreateTransferResult.EXCEEDS_DAILY_OUTFLOW).status == 422


def test_openapi_documents_every_route() -> None:
    """Every route of the table is in the document, with its success status and problems."""
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    for route in ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        assert str(route.status) in operation["responses"]
        assert "401" in operation["responses"] and "503" in operation["responses"]
        if route.policy.money:
            assert any(
                p["name"] == "Idempotency-Key" and p["required"] for p in operation["parameters"]
            )


def test_transfer_ids_derive_from_channel_key_and_index() -> None:
    """Same inputs and key, same id (a retry after a restart meets its transfer); another
    channel, operation key, index or server key, another id; the batch path agrees."""
    ids = TransferIds(DEVELOPMENT.transfer_id_key)
    first = ids.id(2, "order-1", 0)
    assert first == TransferIds(DEVELOPMENT.transfer_id_key).id(2, "order-1", 0)
    others = {
        ids.id(3, "order-1", 0),
        ids.id(2, "order-2", 0),
        ids.id(2, "order-1", 1),
        TransferIds(b"another-server-key-of-at-least-32-bytes").id(2, "order-1", 0),
    }
    assert len({first} | others) == 5
    packed = ids.packed_many(2, "order-1", 3)
    assert [int.from_bytes(p, "little") for p in packed] == [
        ids.id(2, "order-1", i) for i in range(3)
    ]


def test_instruction_fingerprints_cover_every_field() -> None:
    """A fingerprint changes with any field and with field boundaries, and depends on the key."""
    ids = TransferIds(DEVELOPMENT.transfer_id_key)
    first = ids.fingerprint("beneficiary", "ICBC", "6222020000000001", "张三")
    assert first == ids.fingerprint("beneficiary", "ICBC", "6222020000000001", "张三")
    assert 0 < first < 1 << 64
    assert first != ids.fingerprint("beneficiary", "ICBC", "6222020000000001", "李四")
    assert first != ids.fingerprint("beneficiary", "ICBC6", "222020000000001", "张三")
    assert first != TransferIds(b"another-server-key-of-at-least-32-bytes").fingerprint(
        "beneficiary", "ICBC", "6222020000000001", "张三"
    )


PEPPER = b"p" * 32


def test_password_hash_is_salted_keyed_and_checked() -> None:
    """Two hashes of one password differ (salt); only the right password checks, and only
    with the pepper it was hashed with; the hash records its parameters and pepper id; an
    unpeppered hash from before the pepper still checks, and asks to be rehashed."""
    one = passwords.hash_password("135790", PEPPER, n=1 << 10)
    two = passwords.hash_password("135790", PEPPER, n=1 << 10)
    assert one.digest != two.digest
    assert (one.n, one.r, one.p) == (1 << 10, 8, 1)
    assert one.pepper_id == passwords.pepper_id(PEPPER) != passwords.pepper_id(b"q" * 32)
    assert passwords.check_password("135790", one, PEPPER)
    assert not passwords.check_password("135791", one, PEPPER)
    assert not passwords.check_password("135790", one, b"q" * 32)
    assert not passwords.needs_rehash(one, PEPPER, 1 << 10, 8, 1)
    assert passwords.needs_rehash(one, PEPPER, 1 << 11, 8, 1)
    salt = b"s" * 16
    legacy = Password(salt, passwords._scrypt(b"135790", salt, 1 << 10, 8, 1), 1 << 10, 8, 1)
    assert passwords.check_password("135790", legacy, PEPPER)
    assert passwords.needs_rehash(legacy, PEPPER, 1 << 10, 8, 1)


def test_password_format_is_exact_and_weak_passwords_are_named() -> None:
    """Six ASCII digits and nothing else (no trailing newline, no full-width digits); the
    usual guesses, and the holder's birth date, are weak; an ordinary one is not."""
    assert passwords.well_formed("135790")
    full_width = "\uff11\uff13\uff15\uff17\uff19\uff10"  # "135790" in full-width digits
    for bad in ("123456\n", "13579", "1357900", " 135790", full_width, "13579a", 135790):
        assert not passwords.well_formed(bad), bad
    id_number = "11010519900307123X"
    weak_ones = "000000 123456 654321 777777 345678 987654 121212 123123 112112"
    birthdays = "900307 030790 070390 030755 550307"  # YYMMDD, MMDDYY, DDMMYY, MMDD...
    for weak in (weak_ones + " " + birthdays).split():
        assert passwords.weakness(weak, id_number) is not None, weak
    assert passwords.weakness("135790", id_number) is None
    assert passwords.weakness("030755") is None  # no id number: no birthday to guess


def test_state_store_loads_what_it_committed_and_refuses_damage() -> None:
    """Records committed through the store's change list load back into the same maps;
    the nonces staged before a flush are ONE batch record; a nonce past the window is
    dropped at load and its batch's deletion staged; a legacy one-record-per-nonce key
    still loads and expires the same way; a value that is not its key's record is
    refused, naming the key."""
    written: dict[bytes, bytes] = {}

    async def submit(changes: list[tuple[bytes, bytes | None]]) -> None:
        for key, value in changes:
            if value is None:
                written.pop(key, None)
            else:
                written[key] = value

    async def write() -> None:
        store = StateStore()

        async def barrier() -> None:  # what the engine does with a group's staged changes
            drained = store.drain()
            if drained is not None:
                await submit(drained[0])
                store.durable(drained[1])

        store.attach(submit, barrier)
        await store.commit([{"k": "failures", "account": "7", "day": 9, "count": 2}])
        first = store.add_nonce("app", "abcdefgh", 1000)
        second = store.add_nonce("atm", "ijklmnop", 1001)
        assert store.durable_ticket < first < second == store.staged_ticket
        await store.flush()
        assert store.durable_ticket == second

    anyio.run(write)
    batches = [key for key in written if key.startswith(b"nonces/")]
    assert set(written) == {b"failures/7", *batches} and len(batches) == 1
    assert orjson.loads(written[batches[0]])["n"] == [
        ["app", "abcdefgh", 1000],
        ["atm", "ijklmnop", 1001],
    ]
    written[b"nonce/app/legacy12"] = b'{"k":"nonce","c":"app","n":"legacy12","t":1000}'
    store = StateStore()
    store.load(written, now_s=1000, nonce_window_s=300)
    assert store.failures == {7: (9, 2)} and store.nonce_seen("app", "abcdefgh")
    assert store.nonce_seen("atm", "ijklmnop") and store.nonce_seen("app", "legacy12")
    assert store._pending == []
    store.prune_nonces(1300 + 1, 300)  # the t=1000 nonces expire, not the t=1001 one
    assert store._pending == [(b"nonce/app/legacy12", None)]  # the batch still holds one
    later = StateStore()
    later.load(written, now_s=2000, nonce_window_s=300)
    assert not later.nonce_seen("app", "abcdefgh")  # expired: forgotten, deletion staged
    assert sorted(later._pending) == sorted([(batches[0], None), (b"nonce/app/legacy12", None)])
    damaged = dict(written)
    damaged[b"failures/7"] = damaged[b"failures/7"].replace(b'"7"', b'"8"')
    with pytest.raises(StateError, match="failures/7"):
        StateStore().load(damaged, now_s=1000, nonce_window_s=300)


def test_legacy_state_file_drops_a_torn_tail_and_refuses_damage(tmp_path: Path) -> None:
    """The legacy JSON-lines reader (used once, to import the file into the store): a
    torn last line is dropped, a damaged middle line refused; only current records
    (the last per key, nonces inside the window) are imported."""
    path = tmp_path / LEGACY_STATE_FILE
    path.write_bytes(
        b'{"k":"failures","account":"7","day":9,"count":1}\n'
        b'{"k":"failures","account":"7","day":9,"count":2}\n'
        b'{"k":"nonce","c":"app","n":"old","t":10}\n'
        b'{"k":"nonce","c":"app","n":"new","t":1000}\n'
        b'{"k":"failures","account":"8"'  # a crash mid-write
    )
    records = read_legacy_file(str(path))
    assert records is not None and len(records) == 4
    current = legacy_records_to_import(records, now_s=1000, nonce_window_s=300)
    assert current == [
        {"k": "failures", "account": "7", "day": 9, "count": 2},
        {"k": "nonce", "c": "app", "n": "new", "t": 1000},
    ]
    path.write_bytes(b"{not json}\n" + path.read_bytes())
    with pytest.raises(StateError, match="line 1"):
        read_legacy_file(str(path))
    assert read_legacy_file(str(tmp_path / "absent")) is None
