"""The offered load: who sends which transfer when, generated from the seed or replayed.

Three sources, one interface:

- `GeneratedTraffic`: a day (or any window) of DOMAIN.md's traffic for a
  generated population: a diurnal curve with lunch and evening peaks (a
  normal day peaks at about 4x its average), optionally a campaign burst just
  after midnight (about 7x), Poisson arrivals per step, the transaction mix,
  Zipf-skewed users and log-normal amounts (`cext.simgen.TrafficModel`).
- `StoredTraffic` from a trace file (`tally sim run --save-trace`): the
  same requests with their arrival times, replayable through any topology
  and scenario.
- `StoredTraffic` from a journal directory captured from a real `tally
  serve`: its account and rule entries set the bank up, its transfers become
  the requests, at the times the server applied them.

Only first attempts are offered load: retries are the simulated clients'
behaviour and depend on the faults. A request is identified by its number
`seq`; its transfer id is `simgen.request_id(seq)` (journal transfers are
renumbered, the original ids kept in the trace header's mapping).
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cext import simgen
from core.entries import Entry, EntryKind
from ledger.constants import LEDGER_CNY
from ledger.records import TransferView, transfer_view, with_ids
from ledger.types import TRANSFER_SIZE, join_id

from .model import NS_PER_S, SimError
from .population import Population

DAY_S = 86_400
# `tally serve`'s default capacities (core.services.lifecycle.Settings): the server's answers
# are re-derived on a ledger of the same size (a channel's log quota is a share of the log).
SERVER_ACCOUNT_CAPACITY = 1 << 20
SERVER_TRANSFER_CAPACITY = 1 << 22
TRACE_MAGIC = b"TALLYSIM-TRACE1\n"
TRACE_HEADER = struct.Struct("<Q")

# DOMAIN.md's mix, in simgen.KIND_NAMES order.
MIX = (55.0, 15.0, 7.0, 5.0, 3.0, 5.0, 3.0, 4.5, 2.5)
AMOUNT_MEDIANS_MINOR = (4_000, 50_000, 20_000, 20_000, 30_000, 80_000, 50_000, 3_000, 30_000)
AMOUNT_SIGMAS = (1.1, 0.9, 1.0, 1.2, 1.2, 1.0, 1.0, 1.0, 0.8)
AMOUNT_MAX_MINOR = 100_000_000
ZIPF_S = 0.5

# Hour-of-day activity (Asia/Shanghai), before the spikes.
HOURLY = (
    *(0.9, 0.5, 0.3, 0.2, 0.15, 0.2, 0.4, 0.8, 1.1, 1.2, 1.3, 1.5),
    *(1.6, 1.3, 1.2, 1.2, 1.25, 1.35, 1.5, 1.6, 1.7, 1.7, 1.4, 1.1),
)
PROFILES = {
    # postings per user per day, midnight burst height (x the day's average at its peak)
    "normal": (1.0, 0.0),
    "campaign": (2.4, 7.0),
}


def rate_curve(
    profile: str,
    users: int,
    postings_per_user: float | None,
    seconds: int,
    clock_start_s: int = 0,
) -> tuple[array[float], dict[str, float]]:
    """Arrivals per second for each second of the window (days repeat); the window starts
    `clock_start_s` seconds after local midnight (a window from 23:50 meets the campaign's
    midnight burst ten minutes in)."""
    if profile not in PROFILES:
        raise SimError(f"unknown traffic profile {profile!r} (known: {', '.join(PROFILES)})")
    default_ppu, burst_peak = PROFILES[profile]
    ppu = default_ppu if postings_per_user is None else postings_per_user

    def base(t: float) -> float:
        hour = t / 3600.0 - 0.5
        index = math.floor(hour)
        frac = hour - index
        value = HOURLY[index % 24] * (1 - frac) + HOURLY[(index + 1) % 24] * frac
        lunch = 3.0 * math.exp(-0.5 * ((t - 12.17 * 3600) / 600.0) ** 2)
        evening = 2.5 * math.exp(-0.5 * ((t - 20.5 * 3600) / 1200.0) ** 2)
        return value + lunch + evening

    day = [base(t + 0.5) for t in range(DAY_S)]
    mean = sum(day) / DAY_S
    burst_height = 0.0
    if burst_peak > 0:
        # A burst A*exp(-t/600s) after midnight, ramping up over the first minute, sized so
        # the peak is `burst_peak` x the day's average rate.
        tau = 600.0
        area = tau  # integral of exp(-t/tau) over the day
        burst_height = (burst_peak * mean - day[60]) / (1.0 - burst_peak * area / DAY_S)
        for t in range(0, min(DAY_S, int(tau * 12))):
            ramp = min(1.0, (t + 0.5) / 60.0)
            day[t] += burst_height * ramp * math.exp(-t / tau)
    total = sum(day)
    scale = users * ppu / total
    curve = array("d", (day[(t + clock_start_s) % DAY_S] * scale for t in range(seconds)))
    average = users * ppu / DAY_S
    info = {
        "postings_per_user_day": ppu,
        "average_per_s": average,
        "peak_per_s": max(curve) if seconds else 0.0,
        "peak_to_average": (max(day) * scale / average) if average > 0 else 0.0,
    }
    return curve, info


@dataclass
class Traffic:
    """The offered load, cut into simulator steps."""

    kind: str  # "generated" | "trace" | "journal"
    step_ns: int
    steps: int  # steps with traffic (the window)
    step_first_seq: array[int]  # steps + 1 values
    arrivals: array[int] | None  # per request, when stored
    population: Population | None
    model: simgen.TrafficModel | None = None
    records: bytearray | None = None
    setup_entries: list[Entry] = field(default_factory=list)
    admin_entries: list[tuple[int, Entry]] = field(default_factory=list)  # (sim ns, entry)
    account_count: int = 0  # for stored traffic: accounts the setup creates
    info: dict[str, Any] = field(default_factory=dict)
    # A journal's: what the real server answered each request (its first transfer with that
    # id; a CreateTransferResult code per seq), and each admin entry's account results.
    server_results: bytearray | None = None
    original_ids: bytearray | None = None  # a journal's transfer ids, 16 bytes per request
    admin_results: list[bytes | None] = field(default_factory=list)

    @property
    def request_count(self) -> int:
        return int(self.step_first_seq[self.steps])

    def fill_range(self, out: bytearray, offset: int, first_seq: int, count: int) -> None:
        if self.model is not None:
            self.model.fill_range(out, offset, first_seq, count)
        else:
            assert self.records is not None
            start = first_seq * TRANSFER_SIZE
            memoryview(out)[offset * TRANSFER_SIZE : (offset + count) * TRANSFER_SIZE] = memoryview(
                self.records
            )[start : start + count * TRANSFER_SIZE]

    def fill_packed(self, out: bytearray, offset: int, packed: array[int], count: int) -> None:
        if self.model is not None:
            self.model.fill_packed(out, offset, packed, count)
        else:
            assert self.records is not None
            simgen.gather_records(out, offset, self.records, packed, count)

    def record(self, seq: int) -> TransferView:
        """One request's transfer, by name."""
        out = bytearray(TRANSFER_SIZE)
        self.fill_packed(out, 0, array("Q", [seq << 8]), 1)
        return transfer_view(out)


def generated(
    population: Population,
    profile: str,
    postings_per_user: float | None,
    window_s: float,
    step_ns: int,
    seed: int,
    clock_start_s: int = 0,
) -> Traffic:
    """DOMAIN.md's traffic for `population` over `window_s` from `clock_start_s` seconds
    after local midnight (0: the first `window_s` of a day)."""
    seconds = max(1, math.ceil(window_s))
    curve, info = rate_curve(
        profile, population.users, postings_per_user, seconds + 1, clock_start_s
    )
    steps = max(1, round(window_s * NS_PER_S / step_ns))
    counts = array("I", bytes(4 * steps))
    simgen.fill_step_counts(counts, seed, 0, step_ns, curve, NS_PER_S)
    step_first_seq = array("q", bytes(8 * (steps + 1)))
    simgen.prefix_sums(counts, step_first_seq, 0)
    model = simgen.TrafficModel(
        seed,
        population.seed,
        population.users,
        population.merchants,
        population.class_iii_fraction,
        population.fixed_deposit_fraction,
        ZIPF_S,
        MIX,
        AMOUNT_MEDIANS_MINOR,
        AMOUNT_SIGMAS,
        LEDGER_CNY,
        AMOUNT_MAX_MINOR,
    )
    described: dict[str, Any] = info | {
        "clock_start_s": clock_start_s,
        "profile": profile,
        "zipf_s": ZIPF_S,
        "mix_percent": dict(zip(simgen.KIND_NAMES, MIX, strict=True)),
    }
    return Traffic(
        "generated", step_ns, steps, step_first_seq, None, population, model, info=described
    )


# --- traces ---------------------------------------------------------------------------


def save_trace(traffic: Traffic, path: str, header_extra: dict[str, Any]) -> int:
    """Write the offered load (arrival times and records of every request); returns bytes.

    Layout: TRACE_MAGIC, u64 header size, the header as JSON, then one zlib
    stream holding the arrival times (u64 ns each) and then the records
    (128 bytes each), in request order.
    """
    count = traffic.request_count
    header = {
        "version": 1,
        "requests": count,
        "window_ns": traffic.steps * traffic.step_ns,
        "kind": traffic.kind,
        "population": traffic.population.describe() if traffic.population else None,
        "account_count": traffic.account_count,
        "setup_entries": len(traffic.setup_entries),
        "admin_entries": len(traffic.admin_entries),
        "info": traffic.info,
    } | header_extra
    encoded = json.dumps(header, sort_keys=True).encode()
    compressor = zlib.compressobj(1)
    written = 0
    tmp = path + ".tmp"
    with open(tmp, "wb") as out:
        out.write(TRACE_MAGIC + TRACE_HEADER.pack(len(encoded)) + encoded)
        for chunk in _trace_chunks(traffic):
            data = compressor.compress(chunk)
            out.write(data)
            written += len(data)
        out.write(compressor.flush())
    os.replace(tmp, path)
    return os.path.getsize(path)


def _trace_chunks(traffic: Traffic) -> Iterator[bytes]:
    chunk_steps = 4096
    for entry in traffic.setup_entries:
        yield _entry_bytes(0, entry)
    for at_ns, entry in traffic.admin_entries:
        yield _entry_bytes(at_ns, entry)
    for first_step in range(0, traffic.steps, chunk_steps):
        step_count = min(chunk_steps, traffic.steps - first_step)
        first = traffic.step_first_seq[first_step]
        end = traffic.step_first_seq[first_step + step_count]
        if end == first:
            continue
        times = array("Q", bytes(8 * (end - first)))
        if traffic.arrivals is not None:
            times = traffic.arrivals[first:end]
        else:
            simgen.fill_arrivals(
                times,
                traffic.model.seed if traffic.model else 0,
                traffic.step_first_seq,
                traffic.step_ns,
                first_step,
                step_count,
            )
        yield times.tobytes()
    for first_step in range(0, traffic.steps, chunk_steps):
        step_count = min(chunk_steps, traffic.steps - first_step)
        first = traffic.step_first_seq[first_step]
        end = traffic.step_first_seq[first_step + step_count]
        if end == first:
            continue
        records = bytearray((end - first) * TRANSFER_SIZE)
        traffic.fill_range(records, 0, first, end - first)
        yield bytes(records)


ENTRY_HEADER = struct.Struct("<QHHIQI")  # at_ns, kind, business_day, count, timestamp_first, size


def _entry_bytes(at_ns: int, entry: Entry) -> bytes:
    return (
        ENTRY_HEADER.pack(
            at_ns,
            int(entry.kind),
            entry.business_day,
            entry.count,
            entry.timestamp_first,
            len(entry.payload),
        )
        + entry.payload
    )


def load_trace(path: str, step_ns: int) -> tuple[Traffic, dict[str, Any]]:
    """Read a trace file written by `save_trace`; returns the traffic and its header."""
    try:
        with open(path, "rb") as file:
            magic = file.read(len(TRACE_MAGIC))
            if magic != TRACE_MAGIC:
                raise SimError(f"{path}: not a tally sim trace (bad magic)")
            (size,) = TRACE_HEADER.unpack(file.read(TRACE_HEADER.size))
            header = json.loads(file.read(size))
            body = zlib.decompress(file.read())
    except OSError as error:
        raise SimError(f"{path}: cannot read: {error.strerror or error}") from error
    except (zlib.error, ValueError, struct.error) as error:
        raise SimError(f"{path}: damaged trace: {error}") from error
    count = int(header["requests"])
    offset = 0
    setup: list[Entry] = []
    admin: list[tuple[int, Entry]] = []
    for index in range(int(header["setup_entries"]) + int(header["admin_entries"])):
        at_ns, kind, day, entry_count, timestamp_first, payload_size = ENTRY_HEADER.unpack_from(
            body, offset
        )
        offset += ENTRY_HEADER.size
        entry = Entry(
            EntryKind(kind), timestamp_first, day, entry_count, body[offset : offset + payload_size]
        )
        offset += payload_size
        entry.check()
        if index < int(header["setup_entries"]):
            setup.append(entry)
        else:
            admin.append((at_ns, entry))
    if len(body) - offset != count * (8 + TRANSFER_SIZE):
        raise SimError(f"{path}: damaged trace: {len(body) - offset} bytes for {count} requests")
    arrivals = array("Q")
    arrivals.frombytes(body[offset : offset + 8 * count])
    records = bytearray(body[offset + 8 * count :])
    population = None
    if header.get("population"):
        fields = {key: value for key, value in header["population"].items() if key != "merchants"}
        population = Population(**fields)
    window_ns = max(int(header["window_ns"]), (arrivals[-1] + 1) if count else 1)
    traffic = stored(
        "trace",
        arrivals,
        records,
        population,
        window_ns,
        step_ns,
        setup,
        admin,
        int(header.get("account_count", 0)),
    )
    traffic.info = dict(header.get("info", {})) | {"trace": path}
    return traffic, header


def stored(
    kind: str,
    arrivals: array[int],
    records: bytearray,
    population: Population | None,
    window_ns: int,
    step_ns: int,
    setup: list[Entry],
    admin: list[tuple[int, Entry]],
    account_count: int,
) -> Traffic:
    """Traffic from stored requests (sorted by arrival)."""
    steps = max(1, -(-window_ns // step_ns))
    step_first_seq = array("q", bytes(8 * (steps + 1)))
    position = 0
    count = len(arrivals)
    for step in range(steps):
        step_first_seq[step] = position
        end_ns = (step + 1) * step_ns
        while position < count and arrivals[position] < end_ns:
            position += 1
    step_first_seq[steps] = count
    assert position == count, "arrivals beyond the window"
    return Traffic(
        kind,
        step_ns,
        steps,
        step_first_seq,
        arrivals,
        population,
        None,
        records,
        setup,
        admin,
        account_count,
    )


def load_journal(directory: str, step_ns: int) -> Traffic:
    """A journal directory captured from a real server, as offered load.

    Entries before the first transfer batch set the bank up (rules, accounts);
    later non-transfer entries are replayed by whichever DC is primary at their
    time; evictions are the simulator's own business and are skipped. Each
    transfer becomes one request at the time its batch was applied, with its
    id renumbered to the request's (a repeated id is the same request again and
    is not offered twice); the post/void/reversal references follow.
    """
    from core.journal import JournalError
    from core.pg_store import PgStoreError
    from core.replay import ReplayError, replay_outcomes
    from core.store import read_entries

    try:
        stored_records = list(read_entries(directory))
    except (JournalError, PgStoreError) as error:
        raise SimError(f"{directory}: cannot read the journal: {error}") from error
    if not stored_records:
        raise SimError(f"{directory}: the journal holds no records")
    first_seq = stored_records[0][0]
    if first_seq != 1:
        raise SimError(
            f"{directory}: the journal starts at seq {first_seq}; replay needs it from seq 1"
        )
    transfer_entries = [
        entry for _, entry in stored_records if entry.kind == EntryKind.CREATE_TRANSFERS
    ]
    if not transfer_entries:
        raise SimError(f"{directory}: the journal holds no transfers")
    start_ns = transfer_entries[0].timestamp_first
    setup: list[Entry] = []
    admin: list[tuple[int, Entry]] = []
    admin_results: list[bytes | None] = []
    seqs: dict[int, int] = {}
    arrivals = array("Q")
    records = bytearray()
    server_results = bytearray()
    original_ids = bytearray()
    account_count = sum(
        entry.count for _, entry in stored_records if entry.kind == EntryKind.CREATE_ACCOUNTS
    )
    transfer_count = sum(entry.count for entry in transfer_entries)
    seen_transfers = False
    request_hi = simgen.REQUEST_ID_HI
    try:
        outcomes = list(
            replay_outcomes(
                stored_records,
                max(account_count, SERVER_ACCOUNT_CAPACITY),
                max(transfer_count, SERVER_TRANSFER_CAPACITY),
            )
        )
    except ReplayError as error:
        raise SimError(f"{directory}: cannot replay the journal: {error}") from error
    for _seq, entry, outcome in outcomes:
        if entry.kind == EntryKind.EVICT:
            continue
        if entry.kind != EntryKind.CREATE_TRANSFERS:
            if seen_transfers:
                admin.append((max(0, entry.timestamp_first - start_ns), entry))
                admin_results.append(
                    bytes(outcome) if entry.kind == EntryKind.CREATE_ACCOUNTS else None
                )
            else:
                setup.append(entry)
            continue
        seen_transfers = True
        results = outcome[0]
        at_ns = max(0, entry.timestamp_first - start_ns)
        if arrivals and at_ns < arrivals[-1]:
            at_ns = arrivals[-1]
        for index in range(entry.count):
            offset = index * TRANSFER_SIZE
            transfer = transfer_view(entry.payload, offset)
            if transfer.id in seqs:
                continue
            seq = len(arrivals)
            seqs[transfer.id] = seq
            pending = transfer.pending_id
            records += with_ids(
                entry.payload[offset : offset + TRANSFER_SIZE],
                id=join_id(seq + 1, request_hi),
                pending_id=join_id(seqs[pending] + 1, request_hi) if pending in seqs else None,
            )
            arrivals.append(at_ns + index)
            server_results.append(results[index])
            original_ids += entry.payload[offset : offset + 16]
    window_ns = arrivals[-1] + NS_PER_S
    traffic = stored(
        "journal", arrivals, records, None, window_ns, step_ns, setup, admin, account_count
    )
    traffic.server_results = server_results
    traffic.original_ids = original_ids
    traffic.admin_results = admin_results
    traffic.info = {
        # The first transfer's local time of day (Asia/Shanghai, UTC+8): the charts' clock.
        "clock_start_s": (start_ns // NS_PER_S + 8 * 3600) % DAY_S,
        "journal": directory,
        "journal_records": len(stored_records),
        "requests": len(arrivals),
        "renumbered_ids": len(seqs),
    }
    return traffic
