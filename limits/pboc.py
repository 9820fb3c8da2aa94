"""Regulatory numbers for personal accounts, in fen (1 CNY = 100 fen).

Source: PBoC notices 2015 No. 392, 2016 No. 302, 2018 No. 16 (account
classes) and 2016 No. 261 (strong authentication); see shared/DOMAIN.md.
These are ceilings: a bank may configure stricter caps, never looser ones,
and `limits.rules` refuses a rule file that tries.

Inflow and outflow are independent buckets; inside a bucket every counted
kind of movement shares one daily and one yearly total. Class I accounts
have no buckets and no balance cap; Class II has buckets but no balance cap.
"""

from __future__ import annotations

from typing import Final

# Limit counters are int32 in the kernel, so every counter-backed cap (the
# inflow/outflow buckets and a channel's per-day cap) must fit below this.
COUNTER_LIMIT_MINOR: Final = 2**31 - 1

# Class II: 10,000 CNY/day and 200,000 CNY/year in each bucket.
CLASS_II_INFLOW_DAILY_MINOR: Final = 1_000_000
CLASS_II_INFLOW_YEARLY_MINOR: Final = 20_000_000
CLASS_II_OUTFLOW_DAILY_MINOR: Final = 1_000_000
CLASS_II_OUTFLOW_YEARLY_MINOR: Final = 20_000_000

# Class III: inflow 5,000/day 100,000/year, outflow 2,000/day 50,000/year,
# and never more than 2,000 CNY on the account.
CLASS_III_INFLOW_DAILY_MINOR: Final = 500_000
CLASS_III_INFLOW_YEARLY_MINOR: Final = 10_000_000
CLASS_III_OUTFLOW_DAILY_MINOR: Final = 200_000
CLASS_III_OUTFLOW_YEARLY_MINOR: Final = 5_000_000
CLASS_III_BALANCE_CAP_MINOR: Final = 200_000

# Non-counter transfers above 50,000 CNY in a day need strong authentication
# (digital certificate or e-signature), 2016 No. 261.
STRONG_AUTH_DAILY_THRESHOLD_MINOR: Final = 5_000_000

assert CLASS_II_INFLOW_DAILY_MINOR <= CLASS_II_INFLOW_YEARLY_MINOR <= COUNTER_LIMIT_MINOR
assert CLASS_II_OUTFLOW_DAILY_MINOR <= CLASS_II_OUTFLOW_YEARLY_MINOR <= COUNTER_LIMIT_MINOR
assert CLASS_III_INFLOW_DAILY_MINOR <= CLASS_III_INFLOW_YEARLY_MINOR <= COUNTER_LIMIT_MINOR
assert CLASS_III_OUTFLOW_DAILY_MINOR <= CLASS_III_OUTFLOW_YEARLY_MINOR <= COUNTER_LIMIT_MINOR
assert CLASS_III_INFLOW_DAILY_MINOR <= CLASS_II_INFLOW_DAILY_MINOR
assert CLASS_III_OUTFLOW_DAILY_MINOR <= CLASS_II_OUTFLOW_DAILY_MINOR
