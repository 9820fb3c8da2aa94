"""PIN blocks, MACs and the key store of the ISO 8583 channel (channels/iso8583/keys.py).

What is proved here: the MAC is ISO/IEC 9797-1 MAC algorithm 3 with padding
method 1 (the standard's own example in annex B.4 and BouncyCastle's vector),
the PIN block is ISO 9564-1 format 0 (the published clear blocks, and the
Triple DES under it passes the classic known-answer test), and the cached
cipher contexts give exactly what the textbook computation with fresh
contexts gives, message after message, key after key, thread after thread.
The key file is checked whole: a wrong check value, a single-length key, an
unknown field, a key of the other usage, a private key file others can read.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from hypothesis import given
from hypothesis import strategies as st

from channels.iso8583 import keys
from channels.iso8583.keys import (
    DEFAULT_KEYS_PATH,
    EXAMPLE_KEYS_PATH,
    Key,
    KeyFileError,
    PinBlockError,
    SoftwareKeyStore,
    UnknownKeyError,
    load_keys,
)

# ISO/IEC 9797-1:2011 annex B.4 (K = 0123456789ABCDEF, K' = FEDCBA9876543210).
ISO_KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


def des(key8: bytes, block: bytes, decrypt: bool = False) -> bytes:
    cipher = Cipher(TripleDES(key8 * 3), modes.ECB())
    context = cipher.decryptor() if decrypt else cipher.encryptor()
    return context.update(block)


def textbook_mac(data: bytes, key: bytes) -> bytes:
    """Algorithm 3 block by block, with a fresh single-DES context for every step."""
    k1, k2 = key[:8], key[8:]
    if len(data) % 8 or not data:
        data += bytes(8 - len(data) % 8)
    chain = bytes(8)
    for start in range(0, len(data), 8):
        block = bytes(a ^ b for a, b in zip(data[start : start + 8], chain, strict=True))
        chain = des(k1, block)
    return des(k1, des(k2, chain, decrypt=True))


@pytest.mark.parametrize(
    ("key", "data", "expected"),
    [
        (ISO_KEY, b"Now is the time for all ", "A1C72E74EA3FA9B6"),  # ISO 9797-1 B.4
        (ISO_KEY, b"Now is the time for it", "2E2B1428CC78254F"),  # B.4, padding method 1
        (
            bytes.fromhex("7CA110454A1A6E570131D9619DC1376E"),
            b"Hello World !!!!",
            "F09B856213BAB83B",
        ),  # BouncyCastle ISO9797Alg3MacTest
    ],
)
def test_mac_published_vectors(key: bytes, data: bytes, expected: str) -> None:
    """The retail MAC matches the published examples, also when computed twice in a row
    (the cached CBC context must not carry the first message into the second)."""
    assert keys.mac(data, key).hex().upper() == expected
    assert keys.mac(data, key).hex().upper() == expected
    assert keys.verify(data, bytes.fromhex(expected), key)
    assert not keys.verify(data + b"!", bytes.fromhex(expected), key)


@given(
    st.lists(
        st.tuples(st.sampled_from([ISO_KEY, bytes(range(16))]), st.binary(max_size=200)),
        min_size=1,
        max_size=10,
    )
)
def test_mac_equals_the_textbook_computation(messages: list[tuple[bytes, bytes]]) -> None:
    """Any sequence of messages under interleaved keys: cached contexts == fresh ones."""
    for key, data in messages:
        assert keys.mac(data, key) == textbook_mac(data, key)


def test_mac_is_per_thread() -> None:
    """Threads MACing at once under the same key get the right answers (their own contexts)."""
    data = [os.urandom(n) for n in range(1, 200, 7)]
    expected = [textbook_mac(item, ISO_KEY) for item in data]
    failures: list[int] = []

    def work() -> None:
        for _ in range(50):
            for index, item in enumerate(data):
                if keys.mac(item, ISO_KEY) != expected[index]:
                    failures.append(index)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_triple_des_known_answer() -> None:
    """DES (FIPS 81: "Now is t" -> 3FA40E8A984D4815) and two-key 3DES of zeros
    (08D7B4FB629D0885, the key check value 08D7B4) are what the PIN block rides on."""
    assert des(ISO_KEY[:8], b"Now is t").hex().upper() == "3FA40E8A984D4815"
    assert keys.check_value(ISO_KEY) == "08D7B4"


@pytest.mark.parametrize(
    ("pin", "pan", "clear_block"),
    [
        ("1234", "43219876543210987", "0412AC89ABCDEF67"),  # the ISO 9564 / EFTlab example
        ("123456", "5413339000001513", "0612076FFFFFFEAE"),
        ("4315", "6799998900000070017", "04439CFFFFFF8FFE"),  # a 19-digit PAN
    ],
)
def test_pin_block_format_0(pin: str, pan: str, clear_block: str) -> None:
    """The block is 3DES(K1, K2, K1) of the published clear format 0 block, and opens back."""
    block = keys.pin_block(pin, pan, ISO_KEY)
    triple = Cipher(TripleDES(ISO_KEY + ISO_KEY[:8]), modes.ECB())
    assert triple.decryptor().update(block).hex().upper() == clear_block
    assert keys.clear_pin(block, pan, ISO_KEY) == pin


def test_a_pin_block_for_another_pan_or_key_does_not_open() -> None:
    """The wrong PAN, the wrong key or a damaged block: PinBlockError, never a wrong PIN
    that happens to look fine (the control nibble, length and F padding are all checked)."""
    block = keys.pin_block("123456", "6222020000000000018", ISO_KEY)
    with pytest.raises(PinBlockError):
        keys.clear_pin(block, "6222020000000000026", ISO_KEY)
    with pytest.raises(PinBlockError):
        keys.clear_pin(block, "6222020000000000018", bytes(range(16)))
    with pytest.raises(PinBlockError):
        keys.clear_pin(block[:7] + bytes([block[7] ^ 1]), "6222020000000000018", ISO_KEY)
    with pytest.raises(PinBlockError):
        keys.clear_pin(block[:7], "6222020000000000018", ISO_KEY)


@pytest.mark.parametrize(
    ("pin", "pan"),
    [
        ("123", "6222020000000000018"),
        ("1234567890123", "6222020000000000018"),
        ("12a4", "6222020000000000018"),
        ("1234", "622202000000"),
    ],
)
def test_pin_block_refuses_bad_input(pin: str, pan: str) -> None:
    """A PIN of 4-12 digits and a PAN of 13+ digits, nothing else."""
    with pytest.raises(ValueError):
        keys.pin_block(pin, pan, ISO_KEY)


def test_keys_are_double_length() -> None:
    """A 8- or 24-byte key is refused by every primitive."""
    for key in (ISO_KEY[:8], ISO_KEY + ISO_KEY[:8]):
        with pytest.raises(ValueError):
            keys.mac(b"data", key)
        with pytest.raises(ValueError):
            keys.pin_block("1234", "6222020000000000018", key)


def test_generated_keys_have_odd_parity_and_distinct_halves() -> None:
    for _ in range(20):
        key = keys.generate_key()
        assert len(key) == 16 and key[:8] != key[8:]
        assert all(bin(byte).count("1") % 2 == 1 for byte in key)


class Terminal:
    def __init__(
        self, pin_key_id: str, mac_key_id: str, terminal_id: str = "T0000001", master: str = ""
    ) -> None:
        self.pin_key_id = pin_key_id
        self.mac_key_id = mac_key_id
        self.terminal_id = terminal_id
        self.master_key_id = master


def test_shipped_key_files() -> None:
    """core/data/iso8583-keys.toml is examples/iso8583-keys.toml byte for byte, loads, and
    is marked development (public keys); its ATM and POS keys have the right usages."""
    assert DEFAULT_KEYS_PATH.read_bytes() == EXAMPLE_KEYS_PATH.read_bytes()
    assert b"DEVELOPMENT KEYS" in DEFAULT_KEYS_PATH.read_bytes()
    store = load_keys(DEFAULT_KEYS_PATH)
    assert store.development
    for kind in ("atm", "pos"):
        terminal = Terminal(f"dev-{kind}-tpk", f"dev-{kind}-tak")
        assert len(store.pin_key(terminal)) == len(store.mac_key(terminal)) == 16
    with pytest.raises(UnknownKeyError, match="is a mac key"):
        store.pin_key(Terminal("dev-atm-tak", "dev-atm-tak"))
    with pytest.raises(UnknownKeyError, match="no key"):
        store.mac_key(Terminal("dev-atm-tpk", "missing"))
    assert "dev-atm-tpk" in store and store.usage("dev-atm-tak") == "mac"
    assert store.usage("missing") is None


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


GOOD = f"""
[keys.tpk-1]
usage = "pin"
value = "{ISO_KEY.hex().upper()}"
check_value = "08D7B4"
"""


def test_a_private_key_file_loads(tmp_path: Path) -> None:
    store = load_keys(write(tmp_path, GOOD))
    assert not store.development
    assert store.pin_key(Terminal("tpk-1", "")) == ISO_KEY


def test_a_key_file_others_can_read_is_refused_unless_development(tmp_path: Path) -> None:
    """Mode 0644 on real keys: refused (chmod 600 is the fix); `development = true` or a
    copy of the shipped file is accepted and marked development."""
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_keys(write(tmp_path, GOOD, 0o644))
    store = load_keys(write(tmp_path, "development = true\n" + GOOD, 0o644))
    assert store.development
    copy = tmp_path / "copy.toml"
    shutil.copy(EXAMPLE_KEYS_PATH, copy)
    copy.chmod(0o644)
    assert load_keys(copy).development


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (GOOD.replace("08D7B4", "08D7B5"), "the key's is 08D7B4"),
        (GOOD.replace('"pin"', '"kek"'), "usage: one of pin, mac"),
        (GOOD.replace(ISO_KEY.hex().upper(), "0123456789ABCDEF" * 2), "halves are equal"),
        (GOOD.replace(ISO_KEY.hex().upper(), "0123"), "32 hex digits"),
        (GOOD + 'colour = "red"\n', "unknown field 'colour'"),
        ("development = 1\n" + GOOD, "development: true or false"),
        ("", "at least one key"),
        ("[keys", "key file"),
    ],
)
def test_key_file_problems(tmp_path: Path, text: str, problem: str) -> None:
    """Each problem of a key file is named; the file is refused whole."""
    with pytest.raises(KeyFileError, match=problem):
        load_keys(write(tmp_path, text))


def test_software_key_store_from_memory() -> None:
    """The bench and tests build a store without a file."""
    store = SoftwareKeyStore({"a": Key("pin", ISO_KEY), "b": Key("mac", bytes(range(16)))})
    assert store.mac_key(Terminal("a", "b")) == bytes(range(16))


def test_key_exchange_gives_one_terminal_a_new_key_in_memory() -> None:
    """`exchange` makes a new key (odd parity, two different halves) for one terminal and
    usage, returned under the terminal's master key with its check value; it is in force
    for that terminal at once, the other terminals sharing the key ids keep the old keys,
    and the file's keys are untouched (a new store from the same file has the old ones).
    A terminal without a master key gets None; a master key is no working key."""
    store = load_keys(DEFAULT_KEYS_PATH)
    first = Terminal("dev-atm-tpk", "dev-atm-tak", "ATM00001", "dev-atm-tmk")
    second = Terminal("dev-atm-tpk", "dev-atm-tak", "ATM00002", "dev-atm-tmk")
    old_pin, old_mac = store.pin_key(first), store.mac_key(first)
    assert store.exchange(Terminal("dev-atm-tpk", "dev-atm-tak"), "mac") is None
    exchanged = store.exchange(first, "mac")
    assert exchanged is not None
    encrypted, check_value = exchanged
    master = bytes.fromhex("A7D96798CBD98F86074AD3CB322CFBA7")  # dev-atm-tmk
    new_mac = keys.decrypt_key(encrypted, master)
    assert keys.encrypt_key(new_mac, master) == encrypted
    assert keys.check_value(new_mac) == check_value and new_mac[:8] != new_mac[8:]
    assert all(bin(byte).count("1") % 2 for byte in new_mac)
    assert store.mac_key(first) == new_mac != old_mac
    assert store.pin_key(first) == old_pin  # only the MAC key was asked for
    assert store.mac_key(second) == old_mac and store.pin_key(second) == old_pin
    assert load_keys(DEFAULT_KEYS_PATH).mac_key(first) == old_mac
    assert store.usage("dev-atm-tmk") == "master"
    with pytest.raises(UnknownKeyError, match="is a master key"):
        store.pin_key(Terminal("dev-atm-tmk", "dev-atm-tak"))
