"""Terminal keys, PIN blocks and MACs of the ISO 8583 channel.

Each terminal holds two double-length Triple DES keys, named by id in the
terminal registry (core/data/terminals.toml: `pin_key_id`, `mac_key_id`):

- the PIN key (TPK) encrypts the cardholder's PIN as an ISO 9564-1 format 0
  block (field 52): `0 | length | PIN | F padding` XOR `0000 | the 12 PAN
  digits left of the check digit`, Triple DES (K1, K2, K1) in ECB;
- the MAC key (TAK) signs every message: ISO/IEC 9797-1 MAC algorithm 3 (the
  retail MAC of ANSI X9.19), DES CBC-MAC under K1 with zero IV over the
  message up to its MAC field, padding method 1 (zeros to a multiple of 8),
  the last block then decrypted under K2 and encrypted under K1 (field 64 or
  128, 8 bytes).

A terminal may also hold a master key (TMK, usage "master"): a key exchange (0800,
network code 161) then gives it a new PIN or MAC key, generated here and sent encrypted
under that master key (3DES-ECB, K1 K2 K1, with its check value): `KeyStore.exchange`.
The new key is in force for that terminal alone from the answer on (other terminals
sharing the old key id keep it).

`KeyStore` is what the adapter asks for a terminal's keys; `SoftwareKeyStore`
holds them in memory from a TOML file (core/data/iso8583-keys.toml holds the
public DEVELOPMENT keys). A hardware security module is the production
answer, but it never hands out key bytes: behind this seam it would take the
work itself (verify a MAC, compute one, turn a PIN block into a PIN
verification), so the adapter's calls to `verify`, `mac` and `clear_pin` are
the three points an HSM-backed store replaces.

Cost (measured on this 2-core machine): creating a cipher context costs about
6 us, one update of a kept context about 0.4 us plus 0.26 us a block (single
DES runs as 3DES K1 K1 K1: the library offers nothing else), and a message
needs a MAC check, a MAC and often a PIN block. With kept contexts a 166-byte
message's MAC costs about 6.5 us and opening a PIN block 1.9 us. So the
contexts of a key are created once and kept per thread (`_contexts`,
bounded): ECB contexts are stateless between blocks; the CBC
context of the MAC carries its chaining value from the previous message,
which `mac` cancels by XORing it into the first block (E(x1 XOR h XOR h) =
E(x1): the same as a fresh zero IV). tests/unit/test_iso8583_keys.py checks
both against the textbook computation with fresh contexts, and against the
published test vectors.
"""

from __future__ import annotations

import hmac
import os
import stat
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, modes

from core.data import DATA_DIRECTORY
from core.errors import TallyError

KEY_SIZE: Final = 16  # double-length Triple DES: K1 | K2
BLOCK_SIZE: Final = 8
PIN_SIZE_MIN: Final = 4
PIN_SIZE_MAX: Final = 12
PAN_SIZE_MIN: Final = 13  # 12 digits left of the check digit, and the check digit
USAGES: Final = ("pin", "mac", "master")
WORKING_USAGES: Final = ("pin", "mac")  # the keys a key exchange (0800/161) replaces
DEFAULT_KEYS_PATH: Final = DATA_DIRECTORY / "iso8583-keys.toml"
EXAMPLE_KEYS_PATH: Final = Path(__file__).resolve().parents[2] / "examples" / "iso8583-keys.toml"
CONTEXT_CACHE_KEYS_MAX: Final = 4096  # keys whose cipher contexts a thread keeps
_ZERO_BLOCK: Final = bytes(BLOCK_SIZE)


class PinBlockError(ValueError):
    """A PIN block that does not decrypt to a format 0 block for this PAN (wrong key or PAN,
    or tampered): the PIN is unknown, which the adapter answers like a wrong PIN."""


class KeyFileError(TallyError):
    """The key file cannot be used: unreadable, malformed, a bad key, or open to others."""


class UnknownKeyError(TallyError):
    """A key id the key store does not hold, or holds for the other usage."""


# --- the primitives ------------------------------------------------------------------------


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"a terminal key is {KEY_SIZE} bytes (double-length 3DES), not {len(key)}")


class _Contexts:
    """One key's cipher contexts (for one thread): see the module docstring."""

    __slots__ = ("chain", "chain_state", "decrypt", "encrypt")

    def __init__(self, key: bytes) -> None:
        _check_key(key)
        k1 = key[:8]
        triple = TripleDES(key + k1)  # K1, K2, K1
        self.encrypt: CipherContext = Cipher(triple, modes.ECB()).encryptor()
        self.decrypt: CipherContext = Cipher(triple, modes.ECB()).decryptor()
        # Single DES under K1 (a 3DES key K1, K1, K1), CBC from a zero IV.
        self.chain: CipherContext = Cipher(TripleDES(k1 * 3), modes.CBC(_ZERO_BLOCK)).encryptor()
        self.chain_state = 0  # the chain's current value (its last output block) as an int


_local = threading.local()


def _contexts(key: bytes) -> _Contexts:
    cache: dict[bytes, _Contexts] | None = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    contexts = cache.get(key)
    if contexts is None:
        if len(cache) >= CONTEXT_CACHE_KEYS_MAX:
            cache.clear()
        contexts = cache[key] = _Contexts(key)
    return contexts


def mac(data: bytes, key: bytes) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 3, padding method 1, DES, 8 bytes, under a 16-byte key."""
    contexts = _contexts(key)
    size = len(data)
    if size % BLOCK_SIZE or not size:
        data += bytes(BLOCK_SIZE - size % BLOCK_SIZE)  # method 1; an empty message: one block
    head_size = len(data) - BLOCK_SIZE
    chained = 0
    if head_size:
        first = int.from_bytes(data[:8], "big") ^ contexts.chain_state
        out = contexts.chain.update(first.to_bytes(8, "big") + data[8:head_size])
        chained = contexts.chain_state = int.from_bytes(out[-8:], "big")
    last = (int.from_bytes(data[head_size:], "big") ^ chained).to_bytes(8, "big")
    # E_K1(D_K2(E_K1(last XOR chain))) is 3DES (K1, K2, K1) of the last block.
    return contexts.encrypt.update(last)


def verify(data: bytes, code: bytes, key: bytes) -> bool:
    """Whether `code` is the MAC of `data` under `key` (constant-time comparison)."""
    return hmac.compare_digest(mac(data, key), code)


def _pan_field(pan: str) -> int:
    if len(pan) < PAN_SIZE_MIN or not pan.isdigit() or not pan.isascii():
        raise ValueError(f"a PAN for a format 0 PIN block is {PAN_SIZE_MIN}+ digits")
    return int(pan[-13:-1], 16)


def pin_block(pin: str, pan: str, key: bytes) -> bytes:
    """The ISO 9564-1 format 0 block of `pin` for `pan`, encrypted under `key` (the TPK)."""
    if not PIN_SIZE_MIN <= len(pin) <= PIN_SIZE_MAX or not pin.isdigit() or not pin.isascii():
        raise ValueError(f"a PIN is {PIN_SIZE_MIN} to {PIN_SIZE_MAX} digits")
    pin_field = int(f"0{len(pin):X}{pin}".ljust(16, "F"), 16)
    clear = (pin_field ^ _pan_field(pan)).to_bytes(8, "big")
    return _contexts(key).encrypt.update(clear)


def clear_pin(block: bytes, pan: str, key: bytes) -> str:
    """The PIN inside an encrypted format 0 block; PinBlockError if it is not one for `pan`."""
    if len(block) != BLOCK_SIZE:
        raise PinBlockError(f"a PIN block is {BLOCK_SIZE} bytes, not {len(block)}")
    clear = int.from_bytes(_contexts(key).decrypt.update(block), "big") ^ _pan_field(pan)
    digits = f"{clear:016X}"
    size = int(digits[1], 16)
    if (
        digits[0] != "0"
        or not PIN_SIZE_MIN <= size <= PIN_SIZE_MAX
        or not digits[2 : 2 + size].isdigit()
        or digits[2 + size :] != "F" * (14 - size)
    ):
        raise PinBlockError("not a format 0 PIN block for this PAN")
    return digits[2 : 2 + size]


def check_value(key: bytes) -> str:
    """The key check value: the first 3 bytes of 3DES(key, zeros), 6 hex digits."""
    _check_key(key)
    encryptor = Cipher(TripleDES(key + key[:8]), modes.ECB()).encryptor()
    return encryptor.update(_ZERO_BLOCK)[:3].hex().upper()


def encrypt_key(key: bytes, master: bytes) -> bytes:
    """`key` encrypted under `master` (3DES-ECB, K1 K2 K1): how a key exchange sends it."""
    _check_key(key)
    _check_key(master)
    return Cipher(TripleDES(master + master[:8]), modes.ECB()).encryptor().update(key)


def decrypt_key(encrypted: bytes, master: bytes) -> bytes:
    """The key `encrypt_key` encrypted (a terminal installing a key exchange's answer)."""
    _check_key(encrypted)
    _check_key(master)
    return Cipher(TripleDES(master + master[:8]), modes.ECB()).decryptor().update(encrypted)


def generate_key() -> bytes:
    """A random double-length key with two different halves and odd parity (as HSMs keep)."""
    while True:
        key = bytes(
            byte & 0xFE | (bin(byte & 0xFE).count("1") + 1) % 2 for byte in os.urandom(KEY_SIZE)
        )
        if key[:8] != key[8:]:
            return key


# --- the key store -------------------------------------------------------------------------


class TerminalKeys(Protocol):
    """What a key store needs of a terminal: its id and the ids of its keys (the terminal
    registry's; `master_key_id` "" when it has no master key)."""

    @property
    def terminal_id(self) -> str: ...

    @property
    def pin_key_id(self) -> str: ...

    @property
    def mac_key_id(self) -> str: ...

    @property
    def master_key_id(self) -> str: ...


class KeyStore(Protocol):
    """A terminal's keys, by the ids its registry entry names. UnknownKeyError if absent."""

    def pin_key(self, terminal: TerminalKeys) -> bytes: ...

    def mac_key(self, terminal: TerminalKeys) -> bytes: ...

    def exchanged(self, terminal_id: str) -> dict[str, bytes]:
        """The keys a key exchange gave the terminal, by usage ("pin", "mac")."""
        ...

    def install_exchanged(self, terminal_id: str, keys: Mapping[str, bytes]) -> None:
        """Take the terminal's exchanged keys from the store that made them (a
        front-end's copy of the core's); a usage not given is back on the file's key."""
        ...

    def usage(self, key_id: str) -> str | None:
        """ "pin", "mac", "master", or None when the store has no such key (the registry's
        checks)."""
        ...

    def exchange(self, terminal: TerminalKeys, usage: str) -> tuple[bytes, str] | None:
        """A new working key of `usage` ("pin" or "mac") for `terminal`, in force for it
        from now on: returned encrypted under the terminal's master key (16 bytes,
        3DES-ECB) with its check value. None when the terminal has no master key (no
        exchange: answered 40). An HSM generates and keeps the key itself."""
        ...


@dataclass(frozen=True, slots=True)
class Key:
    usage: str  # "pin" (a TPK) or "mac" (a TAK)
    value: bytes


class SoftwareKeyStore:
    """Keys held in memory (from `load_keys`). `development`: the keys are public ones."""

    def __init__(self, keys: Mapping[str, Key], *, development: bool = False) -> None:
        for key_id, key in keys.items():
            assert key.usage in USAGES, (key_id, key.usage)
            _check_key(key.value)
        self._keys = dict(keys)
        self.development = development
        # (terminal id, usage) -> the key a key exchange gave that terminal. In memory
        # only: after a restart the terminals are back on the file's keys and exchange
        # again (a terminal does at sign-on); a store that must keep them is an HSM's.
        self._exchanged: dict[tuple[str, str], bytes] = {}

    def _key(self, key_id: str, usage: str) -> bytes:
        key = self._keys.get(key_id)
        if key is None:
            raise UnknownKeyError(f"no key {key_id!r} in the key store")
        if key.usage != usage:
            raise UnknownKeyError(f"key {key_id!r} is a {key.usage} key, not a {usage} key")
        return key.value

    def pin_key(self, terminal: TerminalKeys) -> bytes:
        if self._exchanged:
            key = self._exchanged.get((terminal.terminal_id, "pin"))
            if key is not None:
                return key
        return self._key(terminal.pin_key_id, "pin")

    def mac_key(self, terminal: TerminalKeys) -> bytes:
        if self._exchanged:
            key = self._exchanged.get((terminal.terminal_id, "mac"))
            if key is not None:
                return key
        return self._key(terminal.mac_key_id, "mac")

    def exchange(self, terminal: TerminalKeys, usage: str) -> tuple[bytes, str] | None:
        """`KeyStore.exchange`; the new key is kept in memory only (see `__init__`)."""
        assert usage in WORKING_USAGES, usage
        if not terminal.master_key_id:
            return None
        master = self._key(terminal.master_key_id, "master")
        key = generate_key()
        self._exchanged[(terminal.terminal_id, usage)] = key
        return encrypt_key(key, master), check_value(key)

    def exchanged(self, terminal_id: str) -> dict[str, bytes]:
        """The keys a key exchange gave the terminal, by usage ("pin", "mac")."""
        return {
            usage: key
            for usage in WORKING_USAGES
            if (key := self._exchanged.get((terminal_id, usage))) is not None
        }

    def install_exchanged(self, terminal_id: str, keys: Mapping[str, bytes]) -> None:
        """Take the terminal's exchanged keys from the store that made them (a front-end's
        copy of the core's: channels/iso8583/services.py); a usage not given is back on
        the file's key."""
        for usage in WORKING_USAGES:
            key = keys.get(usage)
            if key is None:
                self._exchanged.pop((terminal_id, usage), None)
            else:
                _check_key(key)
                self._exchanged[(terminal_id, usage)] = key

    def usage(self, key_id: str) -> str | None:
        """ "pin", "mac", "master", or None when the store has no such key (the registry's
        checks)."""
        key = self._keys.get(key_id)
        return None if key is None else key.usage

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys


_PUBLIC_FILES: Final = (DEFAULT_KEYS_PATH, EXAMPLE_KEYS_PATH)
_KEY_FIELDS: Final = frozenset({"usage", "value", "check_value"})


def _parse_key(key_id: str, entry: object, problems: list[str]) -> Key | None:
    if not isinstance(entry, dict):
        problems.append(f"keys.{key_id}: a table with usage, value and check_value")
        return None
    problems += [
        f"keys.{key_id}: unknown field {name!r}" for name in entry if name not in _KEY_FIELDS
    ]
    usage, text, expected = entry.get("usage"), entry.get("value"), entry.get("check_value")
    if usage not in USAGES:
        problems.append(f"keys.{key_id}.usage: one of {', '.join(USAGES)}")
        return None
    try:
        assert isinstance(text, str)
        value = bytes.fromhex(text)
        _check_key(value)
    except (AssertionError, ValueError):
        problems.append(f"keys.{key_id}.value: {KEY_SIZE * 2} hex digits")
        return None
    if value[:8] == value[8:]:
        problems.append(f"keys.{key_id}.value: its two halves are equal (single DES)")
        return None
    actual = check_value(value)
    if not isinstance(expected, str) or expected.upper() != actual:
        problems.append(
            f"keys.{key_id}.check_value: the key's is {actual}, the file says {expected!r}"
        )
        return None
    return Key(usage, value)


def load_keys(path: str | Path) -> SoftwareKeyStore:
    """Read and check a key file (examples/iso8583-keys.toml shows the format).

    Every problem is listed at once (KeyFileError). A file that others may read
    is refused, unless it declares `development = true` (its keys are public
    anyway, and the server then requires `--dev`) or is the shipped one.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise KeyFileError(f"key file {path}: {error}") from None
    development = document.get("development", False)
    problems = [f"unknown key {name!r}" for name in document if name not in ("development", "keys")]
    if not isinstance(development, bool):
        problems.append("development: true or false")
        development = False
    public = path.resolve() in _PUBLIC_FILES
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and not (development or public):
        problems.append(
            f"the file is open to other users (mode {stat.filemode(mode)}): chmod 600 {path}"
        )
    entries = document.get("keys", {})
    if not isinstance(entries, dict) or not entries:
        problems.append("[keys.ID] tables: at least one key")
        entries = {}
    keys = {}
    for key_id, entry in entries.items():
        key = _parse_key(key_id, entry, problems)
        if key is not None:
            keys[key_id] = key
    if problems:
        raise KeyFileError(f"key file {path}: " + "; ".join(problems))
    return SoftwareKeyStore(keys, development=development or public)
