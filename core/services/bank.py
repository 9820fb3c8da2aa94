"""The middle office assembled: one object holding every service over one runtime.

Adapters (HTTP today) hold a `Bank` and call its services; none of them
touches the engine, the store or the customer state directly.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from core.engine import Clock
from core.services.accounts import Accounts
from core.services.actors import Actors
from core.services.approvals import Approvals
from core.services.auth import Auth
from core.services.customers import Customers
from core.services.deposits import Deposits
from core.services.lifecycle import Lifecycle, Settings
from core.services.loan_accounts import LoanAccounts
from core.services.loans import Loans
from core.services.payments import Payments, PostingCheck
from core.services.policy import VerificationPolicy
from core.services.reads import Reads
from core.services.risk import Risk
from core.services.verification import Verification
from core.store import OpenedStore, open_store
from limits.rules import RuleSet

if TYPE_CHECKING:
    from core.providers.types import Providers


class Bank:
    def __init__(
        self,
        settings: Settings,
        rules: RuleSet,
        *,
        providers: Providers | None = None,
        verification_policy: VerificationPolicy | None = None,
        now_ns: Callable[[], int] = time.time_ns,
        open_store: Callable[..., contextlib.AbstractAsyncContextManager[OpenedStore]] = open_store,
        posting_checks: tuple[PostingCheck, ...] = (),
        actors: Actors | None = None,
        engine_clock: Clock | None = None,
    ) -> None:
        """`now_ns` is the services' clock (business day, token ages); `engine_clock` the
        engine's entry timestamps (None: the system clock): tests that move time give
        both the same clock (`Lifecycle`). `providers`: the identity database, OCR,
        liveness, card issuer and SMS providers the verification steps call (None: none
        configured, a step that needs one is refused PROVIDER_UNAVAILABLE and stays
        pending); `verification_policy`: which steps each channel requires (the channel
        registry's; None: every channel its kind's floor)."""
        self.core = Lifecycle(
            settings, rules, now_ns=now_ns, open_store=open_store, engine_clock=engine_clock
        )
        self.settings = settings
        self.auth = Auth(self.core)
        # Real-name verification (core/services/verification.py): the workflow of steps
        # per customer and per card binding, calling the providers.
        self.verification = Verification(
            self.core, self.auth, providers, verification_policy or VerificationPolicy()
        )
        self.customers = Customers(self.core, self.auth, self.verification)
        self.accounts = Accounts(self.core, self.customers, self.auth, self.verification)
        # Who acts at each channel (the counter's tellers) and each role's caps: the
        # adapters `admit` every request, and every posting is checked at the one point.
        self.actors = actors or Actors()
        if self.actors:
            posting_checks = (self.actors.check_postings, *posting_checks)
        # The risk stage (core/services/risk.py) runs in the one posting path, before the
        # engine, for every posting of every channel.
        self.risk = Risk(self.core, self.auth, self.customers)
        self.payments = Payments(self.core, self.auth, posting_checks, risk=self.risk)
        self.reads = Reads(self.core, self.auth)
        # Products, fixed deposits and interest (core/services/deposits.py).
        self.deposits = Deposits(self.core, self.auth, self.customers, self.accounts, self.payments)
        # Maker-checker approvals of every parameter change and sensitive operation
        # (core/services/approvals.py); each service registers what it owns.
        self.approvals = Approvals(self.core, self.auth, self.payments)
        self.risk.register(self.approvals)
        self.accounts.register(self.approvals)  # close_account
        # Loan products and the trial calculation (core/services/loans.py); the catalog
        # is the approvals' `loans` parameter, the rate the `lpr` one.
        self.loans = Loans(self.core, self.approvals)
        # Loan applications, disbursement, early repayment and the loans' reads
        # (core/services/loan_accounts.py); it keeps `core.loan_terms` for the day-end.
        self.loan_accounts = LoanAccounts(
            self.core, self.auth, self.customers, self.accounts, self.payments,
            self.approvals, self.loans, self.risk,
        )  # fmt: skip

    @property
    def rules(self) -> RuleSet:
        """The limit rules in force (an approved change replaces the ones started with)."""
        return self.core.rules

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Recover, run the engine and keep house until cancelled (`Lifecycle.serve`)."""
        await self.core.serve(self._complete_start, task_status=task_status)

    async def _complete_start(self) -> None:
        """Once the engine runs, before the server is ready: complete the account openings
        a crash interrupted (the loans' own first: `LoanAccounts.complete_start` also
        rebuilds the loan terms table the day-end collects with), then rebuild the risk
        stage's counters from the transfer log (`Risk.rebuild_counters`)."""
        await self.loan_accounts.complete_start()
        await self.accounts.complete_openings()
        await self.risk.rebuild_counters()
