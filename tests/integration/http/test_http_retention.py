"""`tally serve --retention-s`: how long posted transfers must stay in the log.

The bank channel posts three batches of 8189 into a log of 16384 transfers, of
which it may hold half (`log_share_permille`, the internal kind's default):
one channel never fills the log, so no batch is refused 503 (before the log
quotas the third batch was, for every channel). With the default retention
(a day) the bank posts exactly its share and the rest of its items are
refused `channel_log_quota_exceeded`; with a short retention its oldest
transfers are evicted to make room and it posts more. Never a 500.
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
def test_retention_decides_whether_a_channel_at_its_share_makes_room(
    tmp_path: Path, retention_s: str
) -> None:
    """Short retention: old transfers are evicted and the bank posts past its share of
    the log. Default (a day): it posts exactly its share (8192 of 16384). Either way no
    batch is refused: the channel's own items are refused, not the log."""
    extra = ["--transfers-max", "16384"]
    if retention_s:
        extra += ["--retention-s", retention_s]
    server = TallyServer(tmp_path / "data", extra=extra).start()
    try:
        statuses, refusal, tail = post_three_batches(server)
    finally:
        server.stop()
    retry_after, posted = tail.split("|")
    assert statuses == [200, 200, 200] and refusal == "" and retry_after == ""
    if retention_s:
        assert 8192 < int(posted) <= 3 * BATCH
    else:
        assert int(posted) == 8192
