"""Constants of the bank's books, defined once: the ledger code and the bank's own accounts.

Every layer that opens the bank's internal accounts or posts in yuan takes
these from here, so the server, the simulator, the benchmarks and the tests
agree on them by construction.
"""

from __future__ import annotations

from ledger.types import AccountKind

LEDGER_CNY = 156  # ISO 4217 numeric code of the yuan; every account and transfer is on it

# The bank's internal accounts, opened at first start (ids 1..5, below every customer id;
# a journal written before one of them existed gains it at the next start).
CASH_VAULT_ID = 1  # the counters' and ATMs' cash
CLEARING_ID = 2  # money on its way to or from other banks (bound cards, external transfers)
SETTLEMENT_ID = 3  # settlement with merchants and partner banks
INTEREST_EXPENSE_ID = 4  # the bank's interest expense: debited by every interest posting
LOAN_FUNDING_ID = 5  # the bank's loan book: debited by disbursements, credited by repayments
INTERNAL_PRODUCT = 7  # the product row every internal account is opened on
# Every id below this is the bank's own (internal kinds, AccountKind.INTERNAL_*); customer
# accounts are 19-digit card numbers and every tool's generated accounts start here.
BANK_ACCOUNT_ID_LIMIT = 1 << 16

INTERNAL_ACCOUNTS: tuple[tuple[int, AccountKind], ...] = (
    (CASH_VAULT_ID, AccountKind.INTERNAL_CASH),
    (CLEARING_ID, AccountKind.INTERNAL_CLEARING),
    (SETTLEMENT_ID, AccountKind.INTERNAL_SETTLEMENT),
    (INTEREST_EXPENSE_ID, AccountKind.INTERNAL_INTEREST_EXPENSE),
    (LOAN_FUNDING_ID, AccountKind.INTERNAL_LOAN_FUNDING),
)

# The internal "batch" channel (core/data/limits.toml) the bank's own day-end postings go
# through: interest settlement, fixed-deposit maturities, adjustments.
BANK_CHANNEL = 6
