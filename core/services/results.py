"""Typed results: what a service answers, for an adapter to render on its wire."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Posted:
    """One transfer durable in the ledger (or met again by its id: `replayed`)."""

    transfer_id_packed: bytes  # 16 little-endian bytes
    operation: str
    debit: int
    credit: int
    amount_minor: int
    code: int
    flags: int
    pending_id: int
    timeout_s: int
    channel: str
    timestamp_ns: int
    replayed: bool


@dataclass(slots=True)
class BatchPosted:
    records: bytes  # the posted records, ids derived (for the per-item ids)
    count: int
    codes: bytes  # one CreateTransferResult per record
    timestamps: Any  # a sequence of count u64 timestamps
    histogram: dict[int, int]  # result code -> how many


@dataclass(slots=True)
class TokenIssued:
    token: str
    account_id: int
    ttl_s: int
    expires_ns: int


@dataclass(slots=True)
class HistoryPage:
    account_id: int
    items: list[dict[str, Any]]  # transfer read models (core.services.records.transfer_view)
    next_cursor: int | None
