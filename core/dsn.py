"""Database URLs as they may be shown: with the password replaced by `***`.

A PostgreSQL DSN (`postgresql://user:password@host/db`, or `password=` as a
query parameter or a libpq keyword) is a secret as soon as it carries a
password. Everything Tally prints, logs, answers on `/readyz` or writes into
a report goes through `redact_dsn` (one URL) or `redact_secrets` (any text
that may quote one, such as a driver's error message), so the password never
leaves the process.
"""

from __future__ import annotations

import re

REDACTED = "***"

# scheme://user:password@ -> scheme://user:***@ (the password ends at the last '@' of the
# authority: a password may itself contain '@' when the client did not percent-encode it).
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)[^/?#\s]*(?=@)")
# password=... as a query parameter (?password=x&...) or a libpq keyword (password=x host=...)
_PASSWORD_PARAMETER = re.compile(
    r"(?P<head>(?:^|[?&\s;,'\"(])password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^&\s'\",;)]*)",
    re.IGNORECASE,
)


def redact_dsn(dsn: str) -> str:
    """`dsn` with any password in it replaced by `***` (a URL without one is unchanged)."""
    return redact_secrets(dsn)


def redact_secrets(text: str) -> str:
    """`text` with the password of every URL and every `password=` parameter in it redacted."""
    if "@" not in text and "password" not in text.lower():
        return text  # nothing to redact: the usual case, no regex run
    text = _USERINFO.sub(lambda found: found["head"] + REDACTED, text)
    return _PASSWORD_PARAMETER.sub(lambda found: found["head"] + REDACTED, text)
