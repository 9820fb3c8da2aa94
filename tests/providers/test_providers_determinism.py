"""The simulator is a function of its seed: the same seed, the same world and answers;
another seed, other fraud draws. And `tally providers serve` refuses bad options.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from core.providers.population import card_for, face_of, liveness_token
from core.providers.sim import running_simulator
from core.providers.types import CardCheck, IdentityCheck, LivenessCheck, SmsSend
from core.services.identity import resident_id_check_character
from tests.providers.providers_helpers import inbox, providers
from tests.repo_paths import REPO_ROOT

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # three simulators: once is enough (the client runs on trio elsewhere)


FRAUD = {"photo_mismatch_rate": 0.5, "card_mismatch_rate": 0.5, "sms_loss_rate": 0.5}


def _id_number(first_17: str) -> str:
    return first_17 + resident_id_check_character(first_17)


PEOPLE = [_id_number(f"11010519850101{index:03d}") for index in range(1, 40, 2)]


async def _answers(url: str) -> dict[str, Any]:
    """Every fraud draw of 20 people, made with fixed request ids."""
    answers: dict[str, Any] = {"photo": [], "card": [], "sms": [], "score": [], "references": []}
    async with providers(url) as client:
        for index, id_number in enumerate(PEOPLE):
            face = face_of(id_number)
            identity = await client.identity(
                IdentityCheck(f"id-{index}", "林一", id_number, photo_ref=face)
            )
            card = await client.card(
                CardCheck(
                    f"card-{index}",
                    card_for(id_number),
                    "class_i_debit",
                    "林一",
                    id_number,
                    "13900000000",
                )
            )
            live = await client.liveness(LivenessCheck(f"live-{index}", liveness_token(face)))
            phone = f"1380000{index:04d}"
            await client.sms(SmsSend(f"sms-{index}", phone, f"code {100000 + index}"))
            answers["photo"].append(identity.photo_match)
            answers["card"].append(card.mismatched)
            answers["score"].append(live.score_ppm)
            answers["sms"].append(len(inbox(url, phone)))
            answers["references"].append((identity.reference, card.reference, live.reference))
    return answers


async def test_same_seed_same_answers_other_seed_other_draws() -> None:
    """Two simulators with seed 5 answer alike (fraud, scores, references); seed 6 draws
    other stolen identities, cards and lost SMS, each rate about half."""
    with running_simulator(seed=5, **FRAUD) as first_url:
        first = await _answers(first_url)
    with running_simulator(seed=5, **FRAUD) as second_url:
        second = await _answers(second_url)
    with running_simulator(seed=6, **FRAUD) as other_url:
        other = await _answers(other_url)
    assert first == second
    for name in ("photo", "card", "sms", "score", "references"):
        assert first[name] != other[name], name
    for answers in (first, other):  # both outcomes happened: the draws are draws
        assert set(answers["photo"]) == {True, False}
        assert set(answers["card"]) == {(), ("reserved_mobile",)}
        assert set(answers["sms"]) == {0, 1}


def _serve(*options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "core", "providers", "serve", "--port", "0", *options]
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--failure-rate", "1.5"], "--failure-rate must be in [0, 1]"),
        (["--failure-rate", "0.6", "--timeout-rate", "0.6"], "must not exceed 1"),
        (["--latency-ms", "bank=5"], "unknown provider(s) bank"),
        (["--latency-ms", "ocr"], "--latency-ms"),
        (["--token", "env:TALLY_NO_SUCH_VARIABLE"], "TALLY_NO_SUCH_VARIABLE is not set"),
    ],
)
def test_bad_options_are_refused(options: list[str], message: str) -> None:
    """Each bad option: exit status 2 and a message naming it, no server."""
    completed = _serve(*options)
    assert completed.returncode == 2, completed.stderr
    assert message in completed.stderr


ORPHANING_SCRIPT = """
import os
from core.providers.sim import running_simulator
url = running_simulator(seed=1).__enter__()
print(url, flush=True)
os._exit(0)  # gone without stopping its simulator
"""


def test_a_simulator_outlives_no_killed_parent() -> None:
    """A process that dies without stopping its simulator (a killed test run) leaves no
    simulator behind: it notices its parent is gone and exits."""
    parent = subprocess.run(
        [sys.executable, "-c", ORPHANING_SCRIPT],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    url = parent.stdout.strip()
    assert url.startswith("http://127.0.0.1:")
    for _ in range(200):  # polls for up to about 20 s; it takes about one poll (1 s)
        try:
            httpx.get(f"{url}/sim/stats", timeout=1.0)
        except httpx.TransportError:
            return
        time.sleep(0.1)
    raise AssertionError(f"the orphaned simulator at {url} is still answering")
