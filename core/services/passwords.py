"""Transaction passwords: 6 digits, stored as a salted scrypt hash, never logged.

scrypt (RFC 7914) is memory-hard, so a stolen state file does not give up
the one million possible passwords cheaply; its parameters are stored with
each hash so they can be raised without invalidating old ones. Verifying
costs tens of milliseconds of CPU on purpose: it runs in a worker thread,
and a customer who pays often obtains a short-lived token with it instead
of sending the password with every payment.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from core.services.state import Password

PASSWORD_PATTERN = "^[0-9]{6}$"
_PASSWORD_RE = re.compile(PASSWORD_PATTERN)
SCRYPT_N_DEFAULT = 1 << 14  # about 16 MiB and 30-60 ms per hash on this class of machine
SCRYPT_R = 8
SCRYPT_P = 1
DIGEST_SIZE = 32
SALT_SIZE = 16


def well_formed(password: str) -> bool:
    return bool(_PASSWORD_RE.match(password))


def hash_password(password: str, n: int = SCRYPT_N_DEFAULT) -> Password:
    salt = os.urandom(SALT_SIZE)
    digest = _scrypt(password, salt, n, SCRYPT_R, SCRYPT_P)
    return Password(salt, digest, n, SCRYPT_R, SCRYPT_P)


def check_password(password: str, stored: Password) -> bool:
    digest = _scrypt(password, stored.salt, stored.n, stored.r, stored.p)
    return hmac.compare_digest(digest, stored.digest)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 << 20, dklen=DIGEST_SIZE
    )
