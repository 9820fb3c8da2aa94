"""A journal replay against the real server: where the simulated outcome differs from what
the server answered, and why (`report["replay_diff"]`).

The server's answers come out of its journal (`core.replay.replay_outcomes`,
kept per request in `Traffic.server_results`). Each request's replayed outcome
is what its simulated client was answered; an `exists` (or `id_already_failed`)
on a retry stands for what the final primary recorded for that id, so a request
whose reply was lost and whose retry found it applied compares as its record.

A difference is expected only where the scenario's faults change an outcome:

- `gave_up`: the client stopped retrying (the request may or may not be applied);
- `unanswered`: the run ended before the request was answered;
- `fault_window`: the request arrived or was answered while a fault or a
  failover was in progress, or in its aftermath (until the last request that
  arrived during it was answered): retries reorder requests there, and a
  transfer applied after a later one on the same account can get another answer;
- `follows_changed`: one of its accounts (or the pending transfer it names)
  was touched by an earlier request whose outcome changed, or given up;
- `unexplained`: none of these: a defect of the simulator or of the replay.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any

from cext import simgen
from ledger.records import transfer_view
from ledger.types import TRANSFER_SIZE, CreateTransferResult

from .model import NS_PER_S

if TYPE_CHECKING:
    from .simulation import Simulation

EXAMPLES_MAX = 20
CLASSES = ("gave_up", "unanswered", "fault_window", "follows_changed", "unexplained")
EXISTS = int(CreateTransferResult.EXISTS)
ALREADY_FAILED = int(CreateTransferResult.ID_ALREADY_FAILED)


def result_name(code: int) -> str:
    if code == simgen.GAVE_UP:
        return "gave_up"
    if code == simgen.NOT_ACKED:
        return "not_answered"
    try:
        return CreateTransferResult(code).name.lower()
    except ValueError:
        return f"code_{code}"


def disturbed_windows(sim: Simulation) -> list[tuple[int, int]]:
    """[start, end] (ns) of each fault and failover, extended over its aftermath: until
    the last request that arrived during it was answered."""
    windows = [(fault.start_ns, fault.end_ns) for fault in sim.resolved_faults()]
    for failover in sim.failovers:
        end = failover.first_ack_ns if failover.first_ack_ns is not None else sim.end_ns
        windows.append((failover.lost_primary_ns, max(end, failover.promoted_ns)))
    arrivals = sim.traffic.arrivals
    assert arrivals is not None
    extended = []
    for start, end in windows:
        first = bisect.bisect_left(arrivals, start)
        last = bisect.bisect_right(arrivals, end)
        answered = [
            sim.ack_ms[seq] * 1_000_000
            for seq in range(first, last)
            if sim.ack_result[seq] not in (simgen.NOT_ACKED, simgen.GAVE_UP)
        ]
        extended.append((start, max([end, *answered])))
    return sorted(extended)


def compare(sim: Simulation, final_primary: str) -> dict[str, Any] | None:
    """The replay's outcome beside the server's, per transfer id (None: not a journal)."""
    traffic = sim.traffic
    server = traffic.server_results
    if server is None or traffic.records is None or traffic.arrivals is None:
        return None
    recorded = sim.checker.histories[final_primary].seen  # result + 1, 0 = absent
    arrivals = traffic.arrivals
    windows = disturbed_windows(sim)
    starts = [start for start, _ in windows]

    def disturbed(start_ns: int, end_ns: int) -> bool:
        index = bisect.bisect_right(starts, end_ns)  # windows starting by end_ns
        return any(windows[i][1] >= start_ns for i in range(index))

    changed_accounts: set[int] = set()
    changed_requests: set[int] = set()
    by_class = dict.fromkeys(CLASSES, 0)
    same = same_on_retry = 0
    examples: list[dict[str, Any]] = []
    for seq in range(traffic.request_count):
        answer = sim.ack_result[seq]
        expected = server[seq]
        outcome = answer
        if answer in (EXISTS, ALREADY_FAILED) and expected != answer and recorded[seq]:
            outcome = recorded[seq] - 1
        if outcome == expected:
            same += 1
            same_on_retry += outcome != answer
            continue
        transfer = transfer_view(traffic.records, seq * TRANSFER_SIZE)
        accounts = (transfer.debit_account_id, transfer.credit_account_id)
        pending = transfer.pending_id
        answered_ns = sim.ack_ms[seq] * 1_000_000
        if answer == simgen.GAVE_UP:
            kind = "gave_up"
        elif answer == simgen.NOT_ACKED:
            kind = "unanswered"
        elif disturbed(arrivals[seq], max(answered_ns, arrivals[seq])):
            kind = "fault_window"
        elif any(account in changed_accounts for account in accounts) or (
            pending and (pending & ((1 << 64) - 1)) - 1 in changed_requests
        ):
            kind = "follows_changed"
        else:
            kind = "unexplained"
        by_class[kind] += 1
        changed_accounts.update(accounts)
        changed_requests.add(seq)
        if len(examples) < EXAMPLES_MAX or kind == "unexplained":
            ids = traffic.original_ids
            original = (
                int.from_bytes(ids[seq * 16 : seq * 16 + 16], "little") if ids else transfer.id
            )
            examples.append(
                {
                    "transfer_id": f"{original:032x}",
                    "request": seq,
                    "server": result_name(expected),
                    "replay": result_name(outcome),
                    "class": kind,
                    "arrived_s": round(arrivals[seq] / NS_PER_S, 3),
                    "answered_s": round(answered_ns / NS_PER_S, 3)
                    if answer not in (simgen.GAVE_UP, simgen.NOT_ACKED)
                    else None,
                }
            )
    differ = traffic.request_count - same
    admin = sim.admin_diffs
    return {
        "compared": traffic.request_count,
        "same": same,
        "same_after_retry": same_on_retry,
        "differ": differ,
        "by_class": by_class,
        "expected": differ - by_class["unexplained"],
        "unexplained": by_class["unexplained"],
        "examples": examples[: EXAMPLES_MAX + by_class["unexplained"]],
        "admin_entries": {"compared": len(admin), "differ": sum(admin)},
        "windows_s": [[round(a / NS_PER_S, 3), round(b / NS_PER_S, 3)] for a, b in windows],
    }
