"""`core.pg_store.split_hosts`: a multi-host DSN tried host by host keeps everything else."""

from __future__ import annotations

from core.pg_store import split_hosts


def test_multi_host_url_becomes_one_dsn_per_host_in_order() -> None:
    """Each host gets the same user, database and parameters (target_session_attrs too),
    in the DSN's order: the order in which the leader is looked for."""
    dsn = "postgresql://tally:s3cret@10.0.0.1:5432,10.0.0.2:5433,db3/bank?target_session_attrs=read-write"
    assert split_hosts(dsn) == [
        "postgresql://tally:s3cret@10.0.0.1:5432/bank?target_session_attrs=read-write",
        "postgresql://tally:s3cret@10.0.0.2:5433/bank?target_session_attrs=read-write",
        "postgresql://tally:s3cret@db3/bank?target_session_attrs=read-write",
    ]


def test_single_host_and_keyword_dsns_are_left_alone() -> None:
    """One host, a Unix socket in the query, or a libpq keyword string: unchanged."""
    for dsn in (
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "postgresql://postgres@/postgres?host=/tmp/dir&port=5432",
        "host=a,b port=1,2 dbname=x",
    ):
        assert split_hosts(dsn) == [dsn]
