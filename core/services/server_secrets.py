"""The server's own secrets: keys no channel holds, read from a file outside the data directory.

`transfer_id_key` keys the hash that derives a transfer's id from its channel
and operation key (so nobody can compute a hold's id offline);
`password_pepper` keys the transaction-password hash (a stolen data
directory alone does not allow offline guessing). Both are loaded from a TOML
file (`tally serve --secrets FILE`, mode 0600, never inside the data
directory); `DEVELOPMENT` holds public values that only `--dev` may use.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from core.errors import TallyError

SECRET_BYTES_MIN = 32


@dataclass(frozen=True, slots=True)
class ServerSecrets:
    transfer_id_key: bytes
    password_pepper: bytes
    development: bool = False


DEVELOPMENT = ServerSecrets(
    transfer_id_key=b"DEVELOPMENT-ONLY-transfer-id-key-0001-not-for-production",
    password_pepper=b"DEVELOPMENT-ONLY-password-pepper-0001-not-for-production",
    development=True,
)

_KEYS = ("transfer_id_key", "password_pepper")


def load_server_secrets(path: str | Path) -> ServerSecrets:
    """Read and validate a secrets file: both keys, each at least 32 bytes, nothing else."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise TallyError(f"secrets file {path}: {error}") from None
    problems = [f"unknown key {key!r}" for key in document if key not in _KEYS]
    values: dict[str, bytes] = {}
    for key in _KEYS:
        value = document.get(key)
        if not isinstance(value, str) or len(value.encode()) < SECRET_BYTES_MIN:
            problems.append(f"{key} must be a string of at least {SECRET_BYTES_MIN} bytes")
        else:
            values[key] = value.encode()
    if problems:
        raise TallyError(f"secrets file {path}: " + "; ".join(problems))
    return ServerSecrets(values["transfer_id_key"], values["password_pepper"])
