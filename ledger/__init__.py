"""The ledger: model, rules and result codes, the public API over the kernels, and
the plain-Python reference ledger the kernels are tested against.

`open_ledger()` picks the implementation named by `TALLY_KERNEL` (`kernel`, the
default, or `reference`) explicitly: there is no silent fallback from one to
the other, so a missing build fails loudly instead of running 20x slower.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ledger.protocol import Ledger

if TYPE_CHECKING:
    from ledger.kernel import KernelLedger
    from ledger.reference import ReferenceLedger

__all__ = ["BACKENDS", "Ledger", "open_ledger"]

BACKENDS = ("kernel", "reference")


def open_ledger(
    *, account_capacity: int, transfer_capacity: int, backend: str | None = None
) -> KernelLedger | ReferenceLedger:
    """A new empty ledger on the backend named by `backend` or `TALLY_KERNEL`."""
    name = backend or os.environ.get("TALLY_KERNEL", "kernel")
    if name == "kernel":
        from ledger.kernel import KernelLedger

        return KernelLedger(account_capacity=account_capacity, transfer_capacity=transfer_capacity)
    if name == "reference":
        from ledger.reference import ReferenceLedger

        return ReferenceLedger(
            account_capacity=account_capacity, transfer_capacity=transfer_capacity
        )
    raise ValueError(f"TALLY_KERNEL must be one of {', '.join(BACKENDS)}, not {name!r}")
