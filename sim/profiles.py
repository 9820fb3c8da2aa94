"""Deployment profiles: which protections the simulated bank has, said out loud in every report.

`production` (the default) is what the bank runs (ARCHITECTURE.md "Topology"): PostgreSQL
streaming replication under Patroni 3.0.2 with an etcd cluster of one member per DC,
`synchronous_mode_strict`, DC2 the synchronous standby, DC3 tagged `nofailover` (a
synchronous candidate when DC2 cannot be; not `nosync`, as `tally cluster` runs it).
`consensus` is the simulator's earlier model, kept to compare against: protections the real
deployment does not have (leases, epochs in heartbeats, local-only commits while hearing a
majority, a promoted DC catching up from its sibling, automatic majority failover with a
constant promotion time). A scenario may choose one (`profile = "consensus"`), the topology
file names the default, `SimConfig.profile` overrides both.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import SimError

# Every protection a profile may have, with what it means; a report lists them all.
PROTECTIONS: dict[str, str] = {
    "sync_standby_ack": "a batch is acknowledged only once the synchronous standby has it durable",
    "strict_sync": "no local-only commit without a synchronous standby: commits wait"
    " (synchronous_mode_strict)",
    "any_standby_when_no_sync": "with no synchronous candidate left, any streaming standby may"
    " acknowledge, nosync ones included (Patroni 3.0.2 strict mode sets"
    " synchronous_standby_names = '*')",
    "dcs_leader_key": "the primary is whoever holds Patroni's leader key in etcd (TTL, renewed"
    " every loop_wait while the leader reaches an etcd majority)",
    "demote_without_dcs": "a leader that cannot renew its key within retry_timeout demotes itself",
    "sync_only_failover": "only the member in Patroni's /sync key is promoted automatically",
    "remote_never_automatic": "the remote DC (nofailover) is promoted only by an operator",
    "returning_primary_read_only": "an old primary comes back read-only (no leader key) and is"
    " rewound, never serving writes",
    "rebuild_scales_with_data": "promotion and Tally's ledger rebuild take time growing with the"
    " number of accounts",
    "leases": "a primary that hears no other voter for lease_ms stops serving",
    "epochs_in_heartbeats": "heartbeats carry epochs; a primary that hears a newer one steps down",
    "majority_local_commit": "without a synchronous standby, commit on local durability after"
    " degrade_after_s while hearing a majority",
    "sibling_catch_up": "a promoted DC first catches up from any reachable DC with more of its"
    " history",
    "majority_failover": "a majority of voters that no longer hear a primary elect one, with a"
    " constant promotion time",
}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    protections: dict[str, bool]
    no_sync_standby: str  # the default of [replication] no_sync_standby: "block" | "degrade"
    decided_by: str  # who decides an automatic failover

    def has(self, protection: str) -> bool:
        assert protection in PROTECTIONS, protection
        return self.protections[protection]

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "protections": dict(self.protections),
            "description": self.description,
        }


def _protections(*enabled: str) -> dict[str, bool]:
    for name in enabled:
        assert name in PROTECTIONS, name
    return {name: name in enabled for name in PROTECTIONS}


PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            "production",
            "PostgreSQL streaming replication under Patroni 3.0.2 with etcd (one member per DC),"
            " synchronous_mode_strict: DC2 the synchronous standby, DC3 nofailover (sync only"
            " when DC2 cannot be)."
            " Failure detection by the leader key's TTL, promotion of the /sync member only,"
            " ledger rebuild growing with the data, cross-region promotion by an operator.",
            _protections(
                "sync_standby_ack",
                "strict_sync",
                "any_standby_when_no_sync",
                "dcs_leader_key",
                "demote_without_dcs",
                "sync_only_failover",
                "remote_never_automatic",
                "returning_primary_read_only",
                "rebuild_scales_with_data",
            ),
            no_sync_standby="block",
            decided_by="patroni",
        ),
        Profile(
            "consensus",
            "The simulator's earlier model, protections the real deployment does not have:"
            " leases, epochs in heartbeats, local-only commits while hearing a majority"
            " ('degrade'), a promoted DC catching up from its sibling, automatic majority"
            " failover with a constant promotion time.",
            _protections(
                "sync_standby_ack",
                "remote_never_automatic",
                "leases",
                "epochs_in_heartbeats",
                "majority_local_commit",
                "sibling_catch_up",
                "majority_failover",
            ),
            no_sync_standby="degrade",
            decided_by="majority",
        ),
    )
}
DEFAULT_PROFILE = "production"


def profile_named(name: str, where: str = "profile") -> Profile:
    """The profile called `name`, or a SimError naming the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(PROFILES)
        raise SimError(f"{where}: unknown profile {name!r} (known: {known})") from None
