"""Versioned migrations of Tally's PostgreSQL schema.

Each migration is applied once, in order, inside one transaction that first
takes a transaction-level advisory lock: two engines starting at once, or an
engine and `tally db migrate`, serialize on the lock, and the second sees the
first one's versions already recorded and applies nothing. A migration is
never edited once released; a change is a new migration at the end.

The tables (all money in minor units, ids as two signed 64-bit halves: the
same bits as the kernels' unsigned halves, so a row packs back to the exact
128-byte or 64-byte record):

- `tally_entries`: every engine entry by seq: the authoritative log. The
  ledger is a pure function of it (recovery and drills replay it).
- `tally_transfers` (a view since migration 4 over `tally_transfer_records`):
  one row per transfer record of the kernels' log (posted, holds, and
  failures that consume their id), primary key the transfer id: idempotency
  is recorded by the key itself. Stored as (id, seq, the kernel's 128 bytes),
  decoded by the view: a COPY of 4 fields a row instead of 25 (measured
  ~3.7 against ~5.8 us a row, client and server, with the key's index).
- `tally_accounts` (a view since migration 3): one row per account slot:
  balances, pending amounts and the PBoC limit counters, exactly the kernel's
  account and pending rows. It is the latest of `tally_account_versions`
  (append-only: each group COPYs the rows it changed, with its seq, as the
  kernel's 80 raw bytes, 112 with the deposit row since migration 6, decoded by the view) over
  `tally_accounts_compacted` (what the last compaction wrote). A compaction
  (in a group's transaction, every so many version rows) upserts each
  account's latest row into `tally_accounts_compacted` and empties the
  versions: an UPDATE of an account row costs ~10x a COPY of one, and between
  compactions an account changed by many groups is updated once.
- `tally_state`: the customer state (customers, account metadata, password
  hashes, tokens, nonces: opaque keys and values), as of the last committed
  group: each group's PUT_STATE entries' changes, upserted and deleted in
  that group's transaction; the entries themselves are in `tally_entries`.
- `tally_epoch`: the single fencing row: the epoch of the engine allowed to
  write and the last seq it wrote; every group's transaction updates it
  `WHERE epoch = mine AND last_seq = expected`.
"""

from __future__ import annotations

from typing import Any

ADVISORY_LOCK_KEY = 0x7A11_7A11  # "tally tally": the migration lock

TRANSFER_COLUMNS = (
    "id_lo",
    "id_hi",
    "debit_account_id_lo",
    "debit_account_id_hi",
    "credit_account_id_lo",
    "credit_account_id_hi",
    "pending_id_lo",
    "pending_id_hi",
    "amount",
    "timestamp",
    "timeout_s",
    "ledger",
    "code",
    "flags",
    "channel",
    "result",
    "debit_slot",
    "credit_slot",
    "business_day",
    "counted",
    "state",
    "user_data",
    "amount_posted",
    "amount_reversed",
)

ACCOUNT_COLUMNS = (
    "id_lo",
    "id_hi",
    "debits_posted",
    "credits_posted",
    "inflow_daily",
    "inflow_yearly",
    "outflow_daily",
    "outflow_yearly",
    "bound_slot",
    "ledger",
    "kind",
    "status",
    "flags",
    "product",
    "counters_day",
    "internal",
)

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "entries, transfers, accounts, fencing epoch",
        """
        CREATE TABLE tally_epoch (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            epoch bigint NOT NULL,
            last_seq bigint NOT NULL,
            owner text NOT NULL DEFAULT '',
            taken_at timestamptz NOT NULL DEFAULT now()
        );
        INSERT INTO tally_epoch (epoch, last_seq) VALUES (0, 0);

        CREATE TABLE tally_entries (
            seq bigint PRIMARY KEY,
            kind smallint NOT NULL,
            timestamp_first bigint NOT NULL,
            business_day integer NOT NULL,
            count integer NOT NULL,
            epoch bigint NOT NULL,
            payload bytea NOT NULL
        );
        -- Payloads are mostly packed transfers: incompressible enough that pglz is
        -- CPU spent for nothing. Store them out of line, uncompressed.
        ALTER TABLE tally_entries ALTER COLUMN payload SET STORAGE EXTERNAL;

        CREATE TABLE tally_transfers (
            id_lo bigint NOT NULL,
            id_hi bigint NOT NULL,
            debit_account_id_lo bigint NOT NULL,
            debit_account_id_hi bigint NOT NULL,
            credit_account_id_lo bigint NOT NULL,
            credit_account_id_hi bigint NOT NULL,
            pending_id_lo bigint NOT NULL,
            pending_id_hi bigint NOT NULL,
            amount bigint NOT NULL,
            timestamp bigint NOT NULL,
            timeout_s integer NOT NULL,
            ledger smallint NOT NULL,
            code smallint NOT NULL,
            flags smallint NOT NULL,
            channel smallint NOT NULL,
            result smallint NOT NULL,
            debit_slot integer NOT NULL,
            credit_slot integer NOT NULL,
            business_day smallint NOT NULL,
            counted smallint NOT NULL,
            state smallint NOT NULL,
            user_data bigint NOT NULL,
            amount_posted bigint NOT NULL,
            amount_reversed bigint NOT NULL,
            seq bigint NOT NULL,
            PRIMARY KEY (id_lo, id_hi)
        );

        CREATE TABLE tally_accounts (
            slot integer PRIMARY KEY,
            id_lo bigint NOT NULL,
            id_hi bigint NOT NULL,
            debits_posted bigint NOT NULL,
            credits_posted bigint NOT NULL,
            inflow_daily integer NOT NULL,
            inflow_yearly integer NOT NULL,
            outflow_daily integer NOT NULL,
            outflow_yearly integer NOT NULL,
            bound_slot integer NOT NULL,
            ledger smallint NOT NULL,
            kind smallint NOT NULL,
            status smallint NOT NULL,
            flags smallint NOT NULL,
            product smallint NOT NULL,
            counters_day smallint NOT NULL,
            internal smallint NOT NULL,
            debits_pending bigint NOT NULL,
            credits_pending bigint NOT NULL,
            UNIQUE (id_lo, id_hi)
        ) WITH (fillfactor = 50);
        -- Every group rewrites its accounts' rows: room on the page keeps those updates HOT.
        """,
    ),
    (
        2,
        "look-ups of an account's transfers (history, verify)",
        """
        CREATE INDEX tally_transfers_seq ON tally_transfers (seq);
        """,
    ),
    (
        3,
        "account versions appended by COPY, compacted; tally_accounts becomes their view",
        """
        ALTER TABLE tally_accounts RENAME TO tally_accounts_compacted;

        -- row: the kernel's 64-byte account row and 16-byte pending row, as they are
        -- (little-endian): the cheapest COPY there is; the view below decodes it.
        CREATE TABLE tally_account_versions (
            seq bigint NOT NULL,
            slot integer NOT NULL,
            row bytea NOT NULL CHECK (length(row) = 80)
        ) WITH (autovacuum_vacuum_insert_threshold = -1);
        -- Append-only, no index: emptied (TRUNCATE) by every compaction, so vacuuming
        -- it for its inserts is work for nothing.
        ALTER TABLE tally_account_versions ALTER COLUMN row SET STORAGE PLAIN;

        CREATE OR REPLACE FUNCTION tally_le_int8(b bytea, o integer) RETURNS bigint
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        RETURN get_byte(b, o)::bigint | (get_byte(b, o + 1)::bigint << 8)
            | (get_byte(b, o + 2)::bigint << 16) | (get_byte(b, o + 3)::bigint << 24)
            | (get_byte(b, o + 4)::bigint << 32) | (get_byte(b, o + 5)::bigint << 40)
            | (get_byte(b, o + 6)::bigint << 48) | (get_byte(b, o + 7)::bigint << 56);
        CREATE OR REPLACE FUNCTION tally_le_int4(b bytea, o integer) RETURNS integer
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        RETURN ((get_byte(b, o)::bigint | (get_byte(b, o + 1)::bigint << 8)
            | (get_byte(b, o + 2)::bigint << 16) | (get_byte(b, o + 3)::bigint << 24))
            # 2147483648) - 2147483648;
        CREATE OR REPLACE FUNCTION tally_le_int2(b bytea, o integer) RETURNS smallint
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        RETURN ((get_byte(b, o) | (get_byte(b, o + 1) << 8)) # 32768) - 32768;
        CREATE OR REPLACE FUNCTION tally_le_uint1(b bytea, o integer) RETURNS smallint
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        RETURN get_byte(b, o);

        -- Each account's latest version, decoded to the columns of tally_accounts_compacted.
        CREATE VIEW tally_account_versions_latest AS
        SELECT slot,
               tally_le_int8(row, 0) AS id_lo,
               tally_le_int8(row, 8) AS id_hi,
               tally_le_int8(row, 16) AS debits_posted,
               tally_le_int8(row, 24) AS credits_posted,
               tally_le_int4(row, 32) AS inflow_daily,
               tally_le_int4(row, 36) AS inflow_yearly,
               tally_le_int4(row, 40) AS outflow_daily,
               tally_le_int4(row, 44) AS outflow_yearly,
               tally_le_int4(row, 48) AS bound_slot,
               tally_le_int2(row, 52) AS ledger,
               tally_le_uint1(row, 54) AS kind,
               tally_le_uint1(row, 55) AS status,
               tally_le_int2(row, 56) AS flags,
               tally_le_int2(row, 58) AS product,
               tally_le_int2(row, 60) AS counters_day,
               tally_le_int2(row, 62) AS internal,
               tally_le_int8(row, 64) AS debits_pending,
               tally_le_int8(row, 72) AS credits_pending
        FROM (
            SELECT DISTINCT ON (slot) slot, row FROM tally_account_versions
            ORDER BY slot, seq DESC
        ) AS latest;

        -- What operators and `tally db verify` read: every account as it is now.
        CREATE VIEW tally_accounts AS
        SELECT * FROM tally_account_versions_latest
        UNION ALL
        SELECT c.* FROM tally_accounts_compacted AS c
        WHERE NOT EXISTS (SELECT FROM tally_account_versions AS v WHERE v.slot = c.slot);
        """,
    ),
    (
        4,
        "transfers stored as the kernel's 128-byte records; tally_transfers becomes their view",
        """
        CREATE OR REPLACE FUNCTION tally_le_bytes(x bigint, n integer) RETURNS bytea
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        RETURN (
            SELECT string_agg(
                substring(decode(lpad(to_hex(x), 16, '0'), 'hex') FROM 9 - i FOR 1), ''::bytea
                ORDER BY i
            )
            FROM generate_series(1, n) AS i
        );

        -- record: the kernel's transfer record as it is (little-endian), so a COPY row is
        -- four fields, not twenty-five; the id is also a key (idempotency), seq for ranges.
        CREATE TABLE tally_transfer_records (
            id_lo bigint NOT NULL,
            id_hi bigint NOT NULL,
            seq bigint NOT NULL,
            record bytea NOT NULL CHECK (length(record) = 128),
            PRIMARY KEY (id_lo, id_hi)
        );
        ALTER TABLE tally_transfer_records ALTER COLUMN record SET STORAGE PLAIN;

        INSERT INTO tally_transfer_records (id_lo, id_hi, seq, record)
        SELECT id_lo, id_hi, seq,
               tally_le_bytes(id_lo, 8) || tally_le_bytes(id_hi, 8)
               || tally_le_bytes(debit_account_id_lo, 8) || tally_le_bytes(debit_account_id_hi, 8)
               || tally_le_bytes(credit_account_id_lo, 8)
               || tally_le_bytes(credit_account_id_hi, 8)
               || tally_le_bytes(pending_id_lo, 8) || tally_le_bytes(pending_id_hi, 8)
               || tally_le_bytes(amount, 8) || tally_le_bytes(timestamp, 8)
               || tally_le_bytes(timeout_s, 4) || tally_le_bytes(ledger, 2)
               || tally_le_bytes(code, 2) || tally_le_bytes(flags, 2)
               || tally_le_bytes(channel, 1) || tally_le_bytes(result, 1)
               || tally_le_bytes(debit_slot, 4) || tally_le_bytes(credit_slot, 4)
               || tally_le_bytes(business_day, 2) || tally_le_bytes(counted, 1)
               || tally_le_bytes(state, 1) || tally_le_bytes(user_data, 8)
               || tally_le_bytes(amount_posted, 8) || tally_le_bytes(amount_reversed, 8)
        FROM tally_transfers;
        DROP TABLE tally_transfers;
        -- seq only grows with the table: a BRIN range index costs next to nothing per row.
        CREATE INDEX tally_transfer_records_seq ON tally_transfer_records USING brin (seq);

        -- What operators and `tally db verify` read: the records decoded, with the
        -- columns the table had before.
        CREATE VIEW tally_transfers AS
        SELECT tally_le_int8(record, 0) AS id_lo,
               tally_le_int8(record, 8) AS id_hi,
               tally_le_int8(record, 16) AS debit_account_id_lo,
               tally_le_int8(record, 24) AS debit_account_id_hi,
               tally_le_int8(record, 32) AS credit_account_id_lo,
               tally_le_int8(record, 40) AS credit_account_id_hi,
               tally_le_int8(record, 48) AS pending_id_lo,
               tally_le_int8(record, 56) AS pending_id_hi,
               tally_le_int8(record, 64) AS amount,
               tally_le_int8(record, 72) AS timestamp,
               tally_le_int4(record, 80) AS timeout_s,
               tally_le_int2(record, 84) AS ledger,
               tally_le_int2(record, 86) AS code,
               tally_le_int2(record, 88) AS flags,
               tally_le_uint1(record, 90) AS channel,
               tally_le_uint1(record, 91) AS result,
               tally_le_int4(record, 92) AS debit_slot,
               tally_le_int4(record, 96) AS credit_slot,
               tally_le_int2(record, 100) AS business_day,
               tally_le_uint1(record, 102) AS counted,
               tally_le_uint1(record, 103) AS state,
               tally_le_int8(record, 104) AS user_data,
               tally_le_int8(record, 112) AS amount_posted,
               tally_le_int8(record, 120) AS amount_reversed,
               seq
        FROM tally_transfer_records;
        """,
    ),
    (
        5,
        "customer state: one row per key, written in the group that carries its change",
        """
        CREATE TABLE tally_state (
            key bytea PRIMARY KEY,
            value bytea NOT NULL
        );
        """,
    ),
    (
        6,
        "the deposit row (ledger/deposits.py): 32 more bytes in each account version",
        """
        -- Versions written from now on are the kernel's account, pending and deposit rows
        -- (112 bytes); the 80-byte ones written before read as a zero deposit row.
        ALTER TABLE tally_account_versions DROP CONSTRAINT tally_account_versions_row_check;
        ALTER TABLE tally_account_versions ADD CONSTRAINT tally_account_versions_row_check
            CHECK (length(row) IN (80, 112));
        ALTER TABLE tally_accounts_compacted
            ADD COLUMN deposit bytea NOT NULL DEFAULT decode(repeat('00', 32), 'hex');

        DROP VIEW tally_accounts;
        CREATE OR REPLACE VIEW tally_account_versions_latest AS
        SELECT slot,
               tally_le_int8(row, 0) AS id_lo,
               tally_le_int8(row, 8) AS id_hi,
               tally_le_int8(row, 16) AS debits_posted,
               tally_le_int8(row, 24) AS credits_posted,
               tally_le_int4(row, 32) AS inflow_daily,
               tally_le_int4(row, 36) AS inflow_yearly,
               tally_le_int4(row, 40) AS outflow_daily,
               tally_le_int4(row, 44) AS outflow_yearly,
               tally_le_int4(row, 48) AS bound_slot,
               tally_le_int2(row, 52) AS ledger,
               tally_le_uint1(row, 54) AS kind,
               tally_le_uint1(row, 55) AS status,
               tally_le_int2(row, 56) AS flags,
               tally_le_int2(row, 58) AS product,
               tally_le_int2(row, 60) AS counters_day,
               tally_le_int2(row, 62) AS internal,
               tally_le_int8(row, 64) AS debits_pending,
               tally_le_int8(row, 72) AS credits_pending,
               CASE WHEN length(row) = 112 THEN substring(row FROM 81 FOR 32)
                    ELSE decode(repeat('00', 32), 'hex') END AS deposit
        FROM (
            SELECT DISTINCT ON (slot) slot, row FROM tally_account_versions
            ORDER BY slot, seq DESC
        ) AS latest;

        CREATE VIEW tally_accounts AS
        SELECT * FROM tally_account_versions_latest
        UNION ALL
        SELECT c.* FROM tally_accounts_compacted AS c
        WHERE NOT EXISTS (SELECT FROM tally_account_versions AS v WHERE v.slot = c.slot);
        """,
    ),
]

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS tally_schema_version (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def latest_version() -> int:
    return MIGRATIONS[-1][0]


async def migrate(connection: Any, through: int | None = None) -> list[int]:
    """Apply every missing migration (up to `through`, for tests of a migration's data
    conversion) under the advisory lock; returns the versions applied."""
    assert [version for version, _, _ in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    applied: list[int] = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
        await connection.execute(VERSION_TABLE)
        done = {
            row[0] for row in await connection.fetch("SELECT version FROM tally_schema_version")
        }
        for version, name, sql in MIGRATIONS:
            if version in done or (through is not None and version > through):
                continue
            await connection.execute(sql)
            await connection.execute(
                "INSERT INTO tally_schema_version (version, name) VALUES ($1, $2)", version, name
            )
            applied.append(version)
    return applied


async def current_version(connection: Any) -> int:
    exists = await connection.fetchval("SELECT to_regclass('tally_schema_version') IS NOT NULL")
    if not exists:
        return 0
    return int(
        await connection.fetchval("SELECT coalesce(max(version), 0) FROM tally_schema_version")
    )
