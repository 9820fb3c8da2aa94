"""`tally serve --retention-s`: how long posted transfers must stay in the log.

A log of 16384 transfers takes three batches of 8189 only if the first may
be evicted: with a short retention the third batch is posted (the oldest
transfers make room), with the default day it is refused with a 503 and
Retry-After (the log is full of transfers a retry could still ask for),
never a 500. Both servers also prove the refused batch posted nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.reference import Transfer
from ledger.types import TransferCode
from tests.http_helpers import (
    TallyServer,
    balance,
    cash_deposit,
    key,
    open_class_i,
    problem_type,
    register,
)

BATCH = 8189


def post_three_batches(server: TallyServer) -> tuple[list[int], str, str]:
    with server.client("counter") as counter, server.client("bank") as bank_channel:
        source = open_class_i(counter, register(counter, "张三"))
        target = open_class_i(counter, register(counter, "王五", birth="19850101"))
        cash_deposit(counter, source, 10 * BATCH)
        record = Transfer(
            0, int(source), int(target), 0, 1, 0, 0, 156, TransferCode.TRANSFER,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ).pack()  # fmt: skip
        statuses = []
        last = None
        for _ in range(3):
            last = bank_channel.post(
                "/v1/transfers/batch",
                raw=record * BATCH,
                idempotency_key=key(),
                content_type="application/octet-stream",
            )
            statuses.append(last.status_code)
        assert last is not None
        refusal = problem_type(last) if last.status_code != 200 else ""
        retry_after = last.headers.get("retry-after", "")
        return statuses, refusal, f"{retry_after}|{balance(counter, target)}"


@pytest.mark.parametrize("retention_s", ["0", ""])
def test_retention_decides_whether_a_full_log_makes_room(tmp_path: Path, retention_s: str) -> None:
    """Short retention: old transfers are evicted and every batch posts. Default (a day):
    the third batch does not fit and is refused 503 with Retry-After, posting nothing."""
    extra = ["--transfers-max", "16384"]
    if retention_s:
        extra += ["--retention-s", retention_s]
    server = TallyServer(tmp_path / "data", extra=extra).start()
    try:
        statuses, refusal, tail = post_three_batches(server)
    finally:
        server.stop()
    retry_after, posted = tail.split("|")
    if retention_s:
        assert statuses == [200, 200, 200]
        assert int(posted) == 3 * BATCH
    else:
        assert statuses == [200, 200, 503]
        assert refusal == "unavailable" and retry_after == "1"
        assert int(posted) == 2 * BATCH
