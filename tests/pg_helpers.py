"""A real PostgreSQL for the tests: one throwaway cluster per test process, a database per test.

`TALLY_PG_DSN`, when set, names a server to use instead: each test then gets
the tally tables dropped first. Without it the first test that asks starts a
cluster with `core.drills.pg_cluster` (under `nobody` when run as root) and it is
removed when the process exits. If no PostgreSQL binaries exist, the tests
fail with that reason (CI must never pass by skipping them), unless a developer on a
machine without PostgreSQL opted out with TALLY_PG_OPTIONAL=1, which CI never sets:
then they are skipped.
"""

from __future__ import annotations

import atexit
import itertools
import os
import subprocess
import sys

import pytest

from core.drills.pg_cluster import TEST_SETTINGS, Cluster, create_cluster, find_bin_directory

PG_OPTIONAL_ENV = "TALLY_PG_OPTIONAL"
_cluster: Cluster | None = None
_database_numbers = itertools.count(1)
TABLES = (
    "tally_transfer_records",
    "tally_accounts_compacted",
    "tally_account_versions",
    "tally_entries",
    "tally_epoch",
    "tally_state",
    "tally_schema_version",
)
# Tables before migrations 3 and 4: dropped as whichever they are.
VIEWS = ("tally_accounts", "tally_transfers")
FUNCTIONS = (
    "tally_le_int8(bytea, integer)",
    "tally_le_int4(bytea, integer)",
    "tally_le_int2(bytea, integer)",
    "tally_le_uint1(bytea, integer)",
    "tally_le_bytes(bigint, integer)",
)


def require_postgresql_binaries() -> None:
    """Fail the test if initdb and pg_ctl cannot be found; skip it only where the developer
    opted out with TALLY_PG_OPTIONAL=1. A server that is found but does not start fails
    the test in any case (its error propagates)."""
    if find_bin_directory() is not None:
        return
    reason = "PostgreSQL binaries (initdb, pg_ctl) not found"
    if os.environ.get(PG_OPTIONAL_ENV) == "1":
        print(f"skipping PostgreSQL test: {reason} ({PG_OPTIONAL_ENV}=1)", file=sys.stderr)
        pytest.skip(f"{reason} ({PG_OPTIONAL_ENV}=1)")
    pytest.fail(
        f"{reason}: install PostgreSQL, set TALLY_PG_DSN where a test can use a server,"
        f" or set {PG_OPTIONAL_ENV}=1 on a developer machine without it",
        pytrace=False,
    )


def shared_cluster() -> Cluster:
    """The process's throwaway cluster, started on first use and removed at exit."""
    global _cluster
    if _cluster is None:
        require_postgresql_binaries()
        cluster = create_cluster("tests", {**TEST_SETTINGS, "fsync": "off"})
        atexit.register(cluster.remove)
        cluster.start()
        _cluster = cluster
    return _cluster


def psql(cluster: Cluster, sql: str, database: str = "postgres") -> str:
    command = [
        os.path.join(cluster.bin_directory, "psql"),
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        cluster.dsn(database),
        "-c",
        sql,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def fresh_database_dsn() -> str:
    """A DSN to an empty database (a new one in the shared cluster, or TALLY_PG_DSN cleaned)."""
    external = os.environ.get("TALLY_PG_DSN")
    if external:
        drop = "; ".join(
            [
                *(
                    f"DO $$ BEGIN IF to_regclass('{name}') IS NOT NULL THEN EXECUTE"
                    f" (SELECT CASE relkind WHEN 'v' THEN 'DROP VIEW ' ELSE 'DROP TABLE ' END"
                    f" FROM pg_class WHERE oid = '{name}'::regclass) || '{name} CASCADE';"
                    " END IF; END $$"
                    for name in VIEWS
                ),
                *(f"DROP TABLE IF EXISTS {table} CASCADE" for table in TABLES),
                *(f"DROP FUNCTION IF EXISTS {function} CASCADE" for function in FUNCTIONS),
            ]
        )
        completed = subprocess.run(
            ["psql", "-X", "-q", external, "-c", drop], capture_output=True, text=True, check=False
        )
        assert completed.returncode == 0, completed.stderr
        return external
    cluster = shared_cluster()
    name = f"tally_test_{os.getpid()}_{next(_database_numbers)}"
    psql(cluster, f"CREATE DATABASE {name}")
    return cluster.dsn(name)
