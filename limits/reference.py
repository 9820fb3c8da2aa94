"""Plain-Python twin of the kernel's limit checks (`cext/ledger_kernel.pyx`).

Reads line by line like the `cdef` functions of the same names there, in the
same check order. The reference ledger (`ledger/reference.py`) calls these;
differential tests hold the two implementations to the same results.

Counters are int32 in the kernel: a bucket counter only grows when a transfer
passes its cap, and every cap is validated to fit in int32 by the rule file,
so the arithmetic below never overflows there either.
"""

from __future__ import annotations

from limits.calendar import year_of_day

# Indexes into a counters list [inflow_daily, inflow_yearly, outflow_daily, outflow_yearly].
INFLOW_DAILY = 0
INFLOW_YEARLY = 1
OUTFLOW_DAILY = 2
OUTFLOW_YEARLY = 3

# Indexes into a product row (see limits.rules product_table layout).
PRODUCT_BALANCE_FLOOR = 0
PRODUCT_TRANSFER_CAP = 1
PRODUCT_BALANCE_CAP = 2
PRODUCT_INFLOW_DAILY = 3
PRODUCT_INFLOW_YEARLY = 4
PRODUCT_OUTFLOW_DAILY = 5
PRODUCT_OUTFLOW_YEARLY = 6


def counters_effective(counters: list[int], counters_day: int, day: int) -> list[int]:
    """The four counters as they stand on `day`: stale day/year totals read as zero."""
    if counters_day == day:
        return list(counters)
    if year_of_day(counters_day) == year_of_day(day):
        return [0, counters[INFLOW_YEARLY], 0, counters[OUTFLOW_YEARLY]]
    return [0, 0, 0, 0]


def exceeds_cap(used: int, cap: int, amount: int) -> bool:
    """True when `amount` on top of `used` passes `cap` (0 = no cap). Never overflows."""
    return cap != 0 and amount > cap - used


def quota_restore(
    effective: list[int], bucket_daily: int, amount: int, day_original: int, day: int
) -> None:
    """Give back `amount` of a bucket consumed on `day_original`, seen on `day`.

    Same business day: the daily and yearly totals are restored. A later day
    in the same year: only the yearly total (bank practice, DOMAIN.md). The
    totals never go below zero (a counter may have been reset in between).
    """
    bucket_yearly = bucket_daily + 1
    if day_original == day:
        effective[bucket_daily] -= min(amount, effective[bucket_daily])
        effective[bucket_yearly] -= min(amount, effective[bucket_yearly])
    elif year_of_day(day_original) == year_of_day(day):
        effective[bucket_yearly] -= min(amount, effective[bucket_yearly])
