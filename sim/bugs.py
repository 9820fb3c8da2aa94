"""Planted bugs: deliberate mutations of the simulated deployment that the checker must catch.

QA's mutation runs (`tally sim run --plant-bug NAME`): a simulator whose checker cannot
catch a known-bad deployment proves nothing about a good one. Each bug names the built-in
scenarios that can expose it; `tests/simulator` runs each of them at the default test scale
and requires a failed verdict (exit status 3 on the command line).
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import SimError


@dataclass(frozen=True)
class PlantedBug:
    name: str
    description: str
    exposed_by: tuple[str, ...]  # built-in scenarios in which the checker must catch it


PLANTED_BUGS: dict[str, PlantedBug] = {
    bug.name: bug
    for bug in (
        PlantedBug(
            "ack-before-sync-replica",
            "the primary acknowledges a batch as soon as it is durable locally, before the"
            " synchronous standby has it (breaks RPO 0 of a same-city failover)",
            # Lost transfers in the first three; single-copy acknowledgements (the verdict's
            # two-copy invariant when the profile promises two copies) in every one.
            (
                "dc1-outage",
                "old-primary-returns",
                "campaign-dc1-outage-link-partition",
                "region-a-outage",
                "random-faults",
                "region-link-partition",
                "slow-disk-sync-replica",
                "steady",
                "sync-link-flapping",
            ),
        ),
        PlantedBug(
            "old-primary-accepts-writes",
            "the old primary comes back outside Patroni's control (PostgreSQL started by hand"
            " with the synchronous_standby_names = '' a scripted failover left) and serves the"
            " clients still routed to it, committing locally, until its Patroni reaches etcd"
            " and demotes it: its acknowledgements are rewound away",
            ("old-primary-returns",),
        ),
        PlantedBug(
            "interest-one-fen-more",
            "the day-end's settlement pays one fen more than the accrued interest on the first"
            " transfer of every chunk (a rounding slip in the settlement batch), which the"
            " interest checker must catch",
            ("quarter-end-dayend",),
        ),
        PlantedBug(
            "loan-row-not-written",
            "the day-end's loan collection drops the row write of the first loan in every"
            " chunk that paid something (its money moves, its row still says the instalment"
            " is due, so the next day-end would take it again), which the loan checker must"
            " catch",
            ("quarter-end-dayend",),
        ),
        PlantedBug(
            "risk-rule-never-fires",
            "the risk stage is deployed with a program in which one rule can never fire (the"
            " stolen-device rule's code mask cleared: a compiler slip), so the fraud it should"
            " stop goes through; the risk checker, which evaluates the approved rules on the"
            " same postings, must catch it",
            ("fraud-mix",),
        ),
        PlantedBug(
            "kyc-gate-skipped",
            "the account opening does not wait for real-name verification: every applicant"
            " gets the Class II account they asked for, the stolen identities, spoofed faces"
            " and somebody else's cards too, and their first payment leaves it; the check"
            " of the applicants' accounts on each data center must catch it",
            ("onboarding-fraud",),
        ),
    )
}


def planted_bug(name: str) -> PlantedBug:
    """The planted bug called `name`, or a SimError naming the known ones."""
    try:
        return PLANTED_BUGS[name]
    except KeyError:
        known = ", ".join(sorted(PLANTED_BUGS))
        raise SimError(f"--plant-bug: unknown bug {name!r} (known: {known})") from None
