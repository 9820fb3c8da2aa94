"""People of the simulated world for the provider tests, and the simulator's counters."""

from __future__ import annotations

import datetime
import itertools
import uuid
from typing import Any

import httpx

from core.providers.client import HttpProviders
from core.providers.config import ProvidersConfig
from core.providers.population import SIM_TOKEN
from core.services.identity import resident_id_check_character

_people = itertools.count(1)


def resident_id() -> str:
    """A valid 18-character resident ID number not handed out before in this session."""
    index = next(_people)
    birth = datetime.date(1960, 1, 1) + datetime.timedelta(days=index // 500)
    first_17 = f"110105{birth:%Y%m%d}{(index % 500) * 2 + 1:03d}"
    return first_17 + resident_id_check_character(first_17)


def mobile() -> str:
    return f"139{uuid.uuid4().int % 10**8:08d}"


def request_id() -> str:
    return str(uuid.uuid4())


def providers(url: str, token: str = SIM_TOKEN, **options: Any) -> HttpProviders:
    """The client as the services build it, with short backoffs (tests do not wait)."""
    options = {"backoff_s": 0.01, "backoff_max_s": 0.05, **options}
    return HttpProviders(ProvidersConfig.at(url, token, **options))


def stats(url: str) -> dict[str, Any]:
    """The simulator's /sim/stats."""
    answer: dict[str, Any] = httpx.get(f"{url}/sim/stats").json()
    return answer


def counters(url: str, provider: str) -> dict[str, int]:
    """The simulator's counters of one provider (requests, answers, replays, faults...)."""
    counted: dict[str, int] = stats(url)["providers"][provider]
    return counted


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The counters that moved between two readings, by how much."""
    moved = {key: after.get(key, 0) - before.get(key, 0) for key in after.keys() | before.keys()}
    return {key: value for key, value in moved.items() if value}


def arm(url: str, provider: str, mode: str, match: str, count: int = 1) -> None:
    """The next `count` calls of `provider` whose request contains `match` fail as `mode`."""
    body = {"provider": provider, "mode": mode, "match": match, "count": count}
    response = httpx.post(f"{url}/sim/faults", json=body)
    assert response.status_code == 200, response.text


def pin_citizen(url: str, id_number: str, name: str) -> None:
    response = httpx.post(f"{url}/sim/citizens", json={"id_number": id_number, "name": name})
    assert response.status_code == 200, response.text


def inbox(url: str, number: str) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = httpx.get(f"{url}/sim/sms/{number}").json()["messages"]
    return messages
