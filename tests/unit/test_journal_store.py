"""Where `JournalStore.finish_group` makes a group durable: on the event loop while the
disk is fast, in a worker thread after a slow append (for a while) and for a group that
needs a new segment. Real journals in a temp directory, real fdatasync; only a slow
disk is played, by a delay added to the journal's fdatasync. The limits are far from
what a real fdatasync takes, even on a busy CI machine (the tests assert where appends
ran, never how long they took)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import pytest

from core import journal as journal_module
from core.entries import Entry
from core.journal import Journal, JournalScan
from core.journal_store import JournalStore
from tests.unit.test_journal import small_entries

SLOW_S = 0.25  # a slow disk's append
LIMIT_S = 0.2  # the limit of an append on the loop in these tests
NEVER_S = 5.0  # a limit no append here reaches


class Threads:
    """Which thread each `Journal.append` of a journal ran on."""

    def __init__(self, journal: Journal) -> None:
        self.seen: list[int] = []
        append = journal.append

        def recording(entries: Sequence[Entry]) -> None:
            self.seen.append(threading.get_ident())
            append(entries)

        journal.append = recording  # type: ignore[method-assign]

    def on_loop(self) -> list[bool]:
        here = threading.get_ident()
        return [ident == here for ident in self.seen]


def finish_all(store: JournalStore, groups: list[list[Entry]]) -> None:
    async def run() -> None:
        for group in groups:
            await store.finish_group(store.begin_group(group, []))

    anyio.run(run)


def slow_fdatasync(monkeypatch: pytest.MonkeyPatch, slow: Callable[[int], bool]) -> None:
    """The journal's fdatasync, `SLOW_S` late on the calls `slow(n)` picks (n from 0)."""
    calls: list[int] = []
    real = journal_module.os.fdatasync

    def fdatasync(fd: int) -> None:
        n = len(calls)
        calls.append(n)
        if slow(n):
            time.sleep(SLOW_S)
        real(fd)

    monkeypatch.setattr(journal_module.os, "fdatasync", fdatasync)


def test_a_fast_disk_is_appended_on_the_loop(tmp_path: Path) -> None:
    """Every group is appended on the event loop's own thread, durable and in order."""
    entries = small_entries(20)
    with Journal.open(tmp_path) as journal:
        threads = Threads(journal)
        store = JournalStore(journal, inline_append_max_s=NEVER_S)
        finish_all(store, [[entry] for entry in entries])
        assert threads.on_loop() == [True] * 20
        assert (store.appends_inline, store.appends_threaded) == (20, 0)
    assert [stored.entry for stored in JournalScan(tmp_path)] == entries


def test_one_slow_append_alone_stays_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One append on the loop over the limit (the third), the ones around it fast: a
    hiccup of a healthy disk or of a busy machine's scheduler. Every group stays on the
    loop, the slow one is counted as tolerated, and nothing is logged as slow."""
    slow_fdatasync(monkeypatch, lambda n: n in (2, 4))
    with Journal.open(tmp_path) as journal:
        threads = Threads(journal)
        store = JournalStore(journal, inline_append_max_s=LIMIT_S, inline_retry_s=NEVER_S)
        with caplog.at_level(logging.WARNING, logger="tally.store"):
            finish_all(store, [[entry] for entry in small_entries(6)])
        assert threads.on_loop() == [True] * 6
        assert "journal_append_slow" not in caplog.text
        assert (store.appends_inline, store.appends_threaded) == (6, 0)
        assert store.appends_slow_tolerated == 2
    assert len(list(JournalScan(tmp_path))) == 6


def test_two_slow_appends_in_a_row_send_the_next_ones_to_a_thread_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two appends in a row on the loop over the limit (the third and the fourth): the
    next groups go to a worker thread until `inline_retry_s` has passed, and it is
    logged; then the loop again."""
    slow_fdatasync(monkeypatch, lambda n: n in (2, 3))
    with Journal.open(tmp_path) as journal:
        threads = Threads(journal)
        store = JournalStore(journal, inline_append_max_s=LIMIT_S, inline_retry_s=1.0)
        with caplog.at_level(logging.WARNING, logger="tally.store"):
            finish_all(store, [[entry] for entry in small_entries(7)])
        assert threads.on_loop() == [True, True, True, True, False, False, False]
        assert "journal_append_slow" in caplog.text
        assert store.appends_slow_tolerated == 1
        time.sleep(1.0)
        finish_all(store, [[entry] for entry in small_entries(2, first=7)])
        assert threads.on_loop()[7:] == [True, True]
        assert (store.appends_inline, store.appends_threaded) == (6, 3)
    assert len(list(JournalScan(tmp_path))) == 9


def test_a_slow_disk_costs_the_loop_one_append_per_retry_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a disk slow every time, the first two appends run on the loop, then only the
    first of each retry period (it is slow again: threads again at once)."""
    slow_fdatasync(monkeypatch, lambda n: True)
    with Journal.open(tmp_path) as journal:
        threads = Threads(journal)
        store = JournalStore(journal, inline_append_max_s=LIMIT_S, inline_retry_s=0.6)
        finish_all(store, [[entry] for entry in small_entries(9)])
        on_loop = threads.on_loop()
        # 9 appends of 0.25 s span 2.25 s: the loop's at 0 and 0.25, then one about
        # every 0.75 s (the period, and the thread's append under way).
        assert on_loop[:3] == [True, True, False], on_loop
        assert 3 <= sum(on_loop) <= 4, on_loop
        assert store.appends_slow_tolerated == 1


def test_a_group_that_needs_a_new_segment_goes_to_a_thread(tmp_path: Path) -> None:
    """A segment's creation is not done on the loop: a group that does not fit the active
    segment goes to a worker thread (here each after the first: one segment holds one)."""
    entries = small_entries(6, transfers_each=20)  # about 2.6 KB each: one segment holds 1
    with Journal.open(tmp_path, segment_size=4096) as journal:
        threads = Threads(journal)
        store = JournalStore(journal, inline_append_max_s=NEVER_S)
        size = Journal.group_size(entries[:1])
        assert size <= journal.room < 2 * size
        finish_all(store, [entries[:1], entries[1:2], entries[2:3]])
        assert threads.on_loop() == [True, False, False]
        assert journal.stats.segments_created == 2
    assert [stored.entry for stored in JournalScan(tmp_path)] == entries[:3]


def test_inline_appends_can_be_turned_off(tmp_path: Path) -> None:
    """`inline_append_max_s=0`: every append in a worker thread, as before."""
    with Journal.open(tmp_path) as journal:
        threads = Threads(journal)
        store = JournalStore(journal, inline_append_max_s=0)
        finish_all(store, [[entry] for entry in small_entries(3)])
        assert threads.on_loop() == [False, False, False]
        assert (store.appends_inline, store.appends_threaded) == (0, 3)


def test_a_large_group_goes_to_a_thread(tmp_path: Path) -> None:
    """A group over `inline_group_bytes_max` is appended in a worker thread (the next
    group is applied meanwhile); the smaller ones around it on the loop."""
    small, large = small_entries(1), small_entries(1, transfers_each=100, first=1)
    assert Journal.group_size(small) <= 4096 < Journal.group_size(large)
    with Journal.open(tmp_path) as journal:
        threads = Threads(journal)
        store = JournalStore(journal, inline_append_max_s=NEVER_S, inline_group_bytes_max=4096)
        finish_all(store, [small, large, small_entries(1, first=2)])
        assert threads.on_loop() == [True, False, True]


@pytest.mark.parametrize("limit_s", [0.0, 0.010])
def test_the_bank_opens_its_journal_store_with_the_setting(tmp_path: Path, limit_s: float) -> None:
    """`Settings.journal_append_on_loop_max_s` (`tally serve --journal-append-on-loop-ms`)
    reaches the bank's journal store: 0 puts every append in a worker thread."""
    from core.services.bank import Bank
    from core.services.lifecycle import Settings
    from limits.rules import load_rules
    from tests.repo_paths import REPO_ROOT

    settings = Settings(str(tmp_path), scrypt_n=1 << 10, journal_append_on_loop_max_s=limit_s)
    bank = Bank(settings, load_rules(REPO_ROOT / "examples/limits.toml"))

    async def run() -> None:
        async with anyio.create_task_group() as tasks:
            await tasks.start(bank.serve)
            with anyio.fail_after(30):
                while not bank.core.ready:  # noqa: ASYNC110 (readiness is a flag)
                    await anyio.sleep(0.01)
            store = bank.core.store
            assert isinstance(store, JournalStore)
            assert store.inline_append_max_s == limit_s
            tasks.cancel_scope.cancel()

    anyio.run(run)


def test_serve_refuses_a_bad_limit(tmp_path: Path) -> None:
    """A negative or absurd `--journal-append-on-loop-ms` stops `tally serve`, saying so."""
    import subprocess
    import sys

    from tests.repo_paths import REPO_ROOT

    for value in ("-1", "5000", "nan"):
        command = [sys.executable, "-m", "core", "serve", "--dev", "--data", str(tmp_path)]
        done = subprocess.run(
            [*command, "--journal-append-on-loop-ms", value],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "--journal-append-on-loop-ms must be 0 to 1000" in done.stderr
