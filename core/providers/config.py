"""Where the providers are: one endpoint per provider, from a TOML file or one base URL.

    [defaults]                       # optional: applies to every provider below
    timeout_s = 5.0
    attempts_max = 3
    backoff_s = 0.2
    backoff_max_s = 2.0

    [identity]
    url = "https://identity.example.net/api"
    token = "env:TALLY_IDENTITY_TOKEN"     # read from the environment at load time
    timeout_s = 3.0                         # overrides the default

    [ocr]       ... [liveness] ... [issuer] ... [sms]

All five sections are required, each with `url` (http:// or https://, no trailing
slash needed) and `token`: "env:NAME" (an environment variable), "file:PATH" (the
first line of a file, e.g. a mounted secret) or the token itself (discouraged: the
file then holds a credential). An unknown key, a missing section, a bad value or an
unset variable refuses the whole file with a message naming the key
(`ProvidersConfigError`). The client sends the token as `Authorization: Bearer`.

`ProvidersConfig.at(base_url)` puts all five under one URL (`{base}/identity`, `/ocr`,
`/liveness`, `/issuer`, `/sms`), as the simulator serves them; nothing else in the
code knows about the simulator.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import TallyError
from core.providers.population import SIM_TOKEN
from core.providers.types import PROVIDERS

TIMEOUT_S = 5.0  # per attempt
ATTEMPTS_MAX = 3
BACKOFF_S = 0.2  # before the second attempt; doubled for each later one
BACKOFF_MAX_S = 2.0
ATTEMPTS_LIMIT = 10  # a file asking for more is refused: a bound on every call's duration
TIMEOUT_LIMIT_S = 120.0
ENDPOINT_OPTIONS = ("timeout_s", "attempts_max", "backoff_s", "backoff_max_s")


class ProvidersConfigError(TallyError):
    """A providers file that cannot be used: what is wrong and where."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str  # the provider's base URL; the client appends /v1/...
    token: str = field(repr=False)
    timeout_s: float = TIMEOUT_S
    attempts_max: int = ATTEMPTS_MAX
    backoff_s: float = BACKOFF_S
    backoff_max_s: float = BACKOFF_MAX_S

    def __post_init__(self) -> None:
        problem = values_problem(
            self.url,
            self.token,
            self.timeout_s,
            self.attempts_max,
            self.backoff_s,
            self.backoff_max_s,
        )
        assert problem is None, problem


def values_problem(
    url: str,
    token: str,
    timeout_s: float,
    attempts_max: int,
    backoff_s: float,
    backoff_max_s: float,
) -> str | None:
    """What is wrong with an endpoint's values (None if nothing)."""
    if not url.startswith(("http://", "https://")):
        return f"url must start with http:// or https://, not {url!r}"
    if not token:
        return "token must not be empty"
    if not 0 < timeout_s <= TIMEOUT_LIMIT_S:
        return f"timeout_s must be in (0, {TIMEOUT_LIMIT_S}], not {timeout_s}"
    if not 1 <= attempts_max <= ATTEMPTS_LIMIT:
        return f"attempts_max must be in 1..{ATTEMPTS_LIMIT}, not {attempts_max}"
    if not 0 <= backoff_s <= backoff_max_s <= TIMEOUT_LIMIT_S:
        return (
            f"backoff_s ({backoff_s}) and backoff_max_s ({backoff_max_s})"
            f" must satisfy 0 <= backoff_s <= backoff_max_s <= {TIMEOUT_LIMIT_S}"
        )
    return None


@dataclass(frozen=True, slots=True)
class ProvidersConfig:
    identity: Endpoint
    ocr: Endpoint
    liveness: Endpoint
    issuer: Endpoint
    sms: Endpoint

    def endpoint(self, provider: str) -> Endpoint:
        assert provider in PROVIDERS, provider
        endpoint: Endpoint = getattr(self, provider)
        return endpoint

    def replace(self, **changes: Any) -> ProvidersConfig:
        """The same endpoints with `changes` (ENDPOINT_OPTIONS) applied to every one."""
        return ProvidersConfig(
            *(dataclasses.replace(self.endpoint(name), **changes) for name in PROVIDERS)
        )

    @classmethod
    def at(
        cls,
        base_url: str,
        token: str = SIM_TOKEN,
        *,
        timeout_s: float = TIMEOUT_S,
        attempts_max: int = ATTEMPTS_MAX,
        backoff_s: float = BACKOFF_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> ProvidersConfig:
        """All five providers under one base URL (`{base}/identity`, ... `{base}/sms`)."""
        base = base_url.rstrip("/")
        return cls(
            *(
                Endpoint(f"{base}/{name}", token, timeout_s, attempts_max, backoff_s, backoff_max_s)
                for name in PROVIDERS
            )
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ProvidersConfig:
        """The providers of a TOML file (module docstring); ProvidersConfigError if unusable."""
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ProvidersConfigError(f"providers file {path}: {error}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<providers>") -> ProvidersConfig:
        unknown = sorted(set(data) - {"defaults", *PROVIDERS})
        if unknown:
            raise ProvidersConfigError(
                f"providers file {source}: unknown section(s) {', '.join(unknown)}"
                f" (expected defaults, {', '.join(PROVIDERS)})"
            )
        defaults = data.get("defaults", {})
        if not isinstance(defaults, dict):
            raise ProvidersConfigError(f"providers file {source}: [defaults] must be a table")
        options = _options(defaults, "defaults", source, allowed=ENDPOINT_OPTIONS)
        endpoints = []
        for name in PROVIDERS:
            section = data.get(name)
            if not isinstance(section, dict):
                raise ProvidersConfigError(f"providers file {source}: [{name}] is missing")
            endpoints.append(_endpoint(section, name, source, options))
        return cls(*endpoints)


def _options(
    table: dict[str, Any], section: str, source: str, allowed: tuple[str, ...]
) -> dict[str, Any]:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ProvidersConfigError(
            f"providers file {source}: [{section}] unknown key(s) {', '.join(unknown)}"
        )
    options: dict[str, Any] = {}
    for key in ENDPOINT_OPTIONS:
        if key not in table:
            continue
        value = table[key]
        integer = key == "attempts_max"
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            kind = "an integer" if integer else "a number"
            raise ProvidersConfigError(
                f"providers file {source}: [{section}] {key} must be {kind}, not {value!r}"
            )
        options[key] = value if integer else float(value)
    return options


def _endpoint(
    section: dict[str, Any], name: str, source: str, defaults: dict[str, Any]
) -> Endpoint:
    options = {
        **defaults,
        **_options(section, name, source, allowed=("url", "token", *ENDPOINT_OPTIONS)),
    }
    url, token = section.get("url"), section.get("token")
    if not isinstance(url, str) or not url:
        raise ProvidersConfigError(f"providers file {source}: [{name}] url is missing")
    if not isinstance(token, str) or not token:
        raise ProvidersConfigError(f"providers file {source}: [{name}] token is missing")
    values = {
        "url": url.rstrip("/"),
        "token": _credential(token, f"[{name}] token", source),
        "timeout_s": TIMEOUT_S,
        "attempts_max": ATTEMPTS_MAX,
        "backoff_s": BACKOFF_S,
        "backoff_max_s": BACKOFF_MAX_S,
        **options,
    }
    problem = values_problem(**values)
    if problem is not None:
        raise ProvidersConfigError(f"providers file {source}: [{name}] {problem}")
    return Endpoint(**values)


def _credential(value: str, where: str, source: str) -> str:
    """The token a value names: "env:NAME", "file:PATH" or the token itself."""
    if value.startswith("env:"):
        variable = value[4:]
        token = os.environ.get(variable, "")
        if not token:
            raise ProvidersConfigError(
                f"providers file {source}: {where}: environment variable {variable} is not set"
            )
        return token
    if value.startswith("file:"):
        try:
            lines = Path(value[5:]).read_text().splitlines()
        except OSError as error:
            raise ProvidersConfigError(f"providers file {source}: {where}: {error}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ProvidersConfigError(f"providers file {source}: {where}: {value[5:]} is empty")
        return token
    return value
