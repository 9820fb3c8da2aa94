"""The risk stage in the simulator: fraud in the generated traffic, the bank's own rules
screening it, and an independent check of what they decided.

Issue 15 puts a risk stage in front of the engine (`core/services/risk.py`); a scenario
with a `[risk]` table (`fraud-mix`) runs the SAME stage here: the kernel
(`cext.risk.RiskKernel`, or its pure-Python twin `limits.risk_reference` when the
extension is not built) loaded with the program and lists `limits.risk` compiles from
the rule file (default `core/data/risk.toml`, the bank's shipped set). Nothing of the
policy is copied: the sim only builds the per-posting CONTEXT rows
(`limits.risk_layout.pack_context`) and acts on the VERDICT rows, as the service does.

**Fraud** (`FraudPlan`, deterministic from the seed): a `fraud_share` of the requests
is rewritten into fraud, grouped in episodes of `EPISODE_S` of simulated time:

- *stolen device*: a victim's Class II account, the thief's new device and IP, several
  large transfers (`TRANSFER`, log-normal around `STOLEN_MEDIAN_MINOR`) within minutes
  to one payee the victim never paid (the thief's account);
- *mule*: many different payers (scam victims, on their own devices) sending
  transfers to one mule account within the hour.

The rewritten record keeps the request's id, ledger and channel; only accounts, amount
and code change. Legitimate requests are screened with their user's own device and IP
(keys derived from the debit account: the customer key is the debit account's), seen
before the window began (`RiskStage.warm_up`: one posting per customer's device before
the window, older than every rule window), so a legitimate customer is "new device"
only if the rules say so.

**Outcomes** in the sim (the channel's answers, `core/services/payments.py`):

- ALLOW (and a challenge met by a second factor): posted as is;
- CHALLENGE: a legitimate customer presents a second factor on the retry (the same
  request is screened again with `second_factor` set, and counted as a legitimate
  challenge); a fraudster cannot: the request is answered `RESULT_RISK_CHALLENGE`;
- BLOCK: answered `RESULT_RISK_BLOCKED`;
- DELAY / REVIEW: the record becomes a PENDING hold (same id, accounts, amount;
  timeout = hold length + 1 day) and the client is acknowledged (HTTP 202 on the
  real channel). Releases and returns are after the window (delay 1 h, review 3 days):
  the holds stay pending in the run, an approximation stated in sim/README.md.

A refused request never reaches the engine (no id consumed, no record): the client's
answer is a code of the ledger's *validation* class (`RESULT_RISK_*`, which the
generated traffic never produces otherwise), so the checker's rule for those ("no
record") holds, and the report names them `risk_challenge` / `risk_blocked`.

**Retries** of a decided request (a timeout, a refusal from a non-primary) reuse the
decision when it is durable on the DC that screens the retry (the service reuses the
decision recorded for the transfer id, and its store holds what its DC holds): nothing
is counted twice. A decision rides in the entry of the batch it was made in
(`RiskStage.carried`: the service stages it into the posting's group); one of a batch
whose every request was refused is answered at once and never retried. A decision the
screening DC does not hold (its batch was lost in a failover) is forgotten: the retry
is screened again, and its request counted once, with the later decision.

**Failovers** (the deployment the bank runs, `core/services/risk.py`): the counters
live in each DC's Tally process (`Process`: the kernel and the checker's twin beside
it). The initial primary's has run since before the window (the warm-up). A promoted
DC, and a DC restarted believing it is the primary, start theirs the way the server
does (`Risk.rebuild_counters`): cleared, then the newest records of their OWN transfer
log replayed through the same code (`core.services.risk.replay_ranges` /
`replay_log`): device and IP counters and first-seen devices are lost (the log does
not carry them; every device is new again), postings the new primary never received
are not counted. A DC that dies loses its process. `report["risk"]["rebuilds"]` lists
each rebuild (DC, time, postings replayed).

**The checker** (`RiskChecker`): an independent evaluator (`ReferenceRiskKernel`, the
twin the differential test holds to the kernel) fed the program compiled from the
APPROVED rule file and the same records, contexts and clocks; every verdict of the
stage must equal it (`report["risk"]["mismatches"]`, the invariant
`risk_as_specified`). The planted bug `risk-rule-never-fires` deploys a program in
which one rule can never fire (its code mask cleared): the checker catches it.

Memory: only scenarios with `[risk]` build a stage (a 30M campaign day does not).
"""

from __future__ import annotations

import bisect
import struct
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cext import simgen
from core.data import DEFAULT_RISK_PATH
from core.engine_policy import BATCH_SIZE_MAX
from core.services.risk import replay_log, replay_ranges
from ledger.types import TRANSFER_SIZE, CreateTransferResult, TransferCode, TransferFlags
from limits.risk_layout import CONTEXT, RULE, VERDICT, Outcome, RuleType
from limits.risk_reference import new_risk_kernel

from .model import NS_PER_S, REPO_ROOT, SimError

# The simulated channel's answers to a refused request: validation-class codes (no id
# consumed, no record) the generated traffic never produces otherwise.
RESULT_RISK_CHALLENGE = int(CreateTransferResult.LINKED_EVENT_FAILED)
RESULT_RISK_BLOCKED = int(CreateTransferResult.LINKED_EVENT_CHAIN_OPEN)
RESULT_NAMES = {RESULT_RISK_CHALLENGE: "risk_challenge", RESULT_RISK_BLOCKED: "risk_blocked"}

EPISODE_S = 600  # a stolen-device episode's span of simulated time
MULE_EPISODE_S = 3600  # a mule collects within the hour
STOLEN_POSTINGS = 5  # fraud requests per stolen-device episode, on average
MULE_POSTINGS = 40  # payers per mule, on average
STOLEN_MIN_MINOR = 500_000  # 5,000..9,999 CNY: large, under a Class II's daily outflow
STOLEN_SPAN_MINOR = 500_000
MULE_MEDIAN_MINOR = 300_000  # 3,000 CNY
FRAUD_SHARE_DEFAULT = 0.01
FRAUD_SHARE_MAX = 0.5
FRAUD_KINDS = ("stolen_device", "mule")
PLANTED_SILENT_RULE = "risk-rule-never-fires"
USERS_MAX = 2_000_000  # the checker is the pure-Python twin: fraud-mix runs small
LOCAL_OFFSET_S = 8 * 3600  # Asia/Shanghai, the rules' clock (no daylight saving)
DAY_S = 86_400
SCREEN_CHUNK = 8192
LSN_BITS = 40  # `RiskStage.carried_at`: (epoch << LSN_BITS) | lsn
LSN_MASK = (1 << LSN_BITS) - 1
EXAMPLES_MAX = 20

# Actions decided per request (a bytearray indexed by seq; retries reuse them).
UNDECIDED, ALLOW, HOLD_DELAY, HOLD_REVIEW, REFUSED_CHALLENGE, REFUSED_BLOCK = range(6)
ACTION_NAMES = ("undecided", "allow", "delay", "review", "challenge", "block")

_MASK64 = (1 << 64) - 1
_TAG_INTERNAL = simgen.TAG_INTERNAL
_CHANNEL_APP = 2
_CHANNELS_MOBILE = (1, 2)  # WeChat, the app
_ACCOUNT_HI_BASE = simgen.ACCOUNT_ID_HI_BASE
_IDS = struct.Struct("<QQQQ")  # debit lo, hi, credit lo, hi at offset 16
_AMOUNT = struct.Struct("<q")  # at 64
_TIMEOUT = struct.Struct("<I")  # at 80
_CODE_FLAGS_CHANNEL = struct.Struct("<HHB")  # code at 86, flags at 88, channel at 90


def mix64(value: int) -> int:
    """SplitMix64's finalizer (the simulator's own keys: customers, devices, IPs)."""
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) or 1


def _unit(value: int) -> float:
    return (mix64(value) >> 11) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class RiskSpec:
    """A scenario's `[risk]` table: the stage runs, with this much fraud and these rules."""

    fraud_share: float = FRAUD_SHARE_DEFAULT
    rules_path: str = str(DEFAULT_RISK_PATH)
    stolen_share: float = 0.5  # of the fraud requests; the rest are mule payments

    def to_json(self) -> dict[str, Any]:
        return {
            "fraud_share": self.fraud_share,
            "rules": _shown_path(self.rules_path),
            "stolen_share": self.stolen_share,
        }


def _shown_path(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return path


def parse_risk_table(data: Any, source: str) -> tuple[RiskSpec | None, list[str]]:
    """The scenario's `[risk]` table (`fraud_share` 0..0.5, `rules` a path relative to the
    repository or absolute, `stolen_share` 0..1); returns (spec, problems as
    "risk.KEY: message" lines)."""
    problems: list[str] = []
    if not isinstance(data, dict):
        return None, ["risk: expected a table"]
    for key in data:
        if key not in ("fraud_share", "rules", "stolen_share"):
            problems.append(f"risk.{key}: unknown key (known: fraud_share, rules, stolen_share)")

    def share(key: str, default: float, high: float) -> float:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
            problems.append(f"risk.{key}: {value!r}: expected a number in 0..{high:g}")
            return default
        return float(value)

    fraud_share = share("fraud_share", FRAUD_SHARE_DEFAULT, FRAUD_SHARE_MAX)
    stolen_share = share("stolen_share", 0.5, 1.0)
    rules = data.get("rules", str(DEFAULT_RISK_PATH))
    if not isinstance(rules, str) or not rules:
        problems.append(f"risk.rules: {rules!r}: expected a path to a risk rule file")
        rules = str(DEFAULT_RISK_PATH)
    path = Path(rules)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.is_file():
        problems.append(f"risk.rules: {rules}: no such file")
    if problems:
        return None, problems
    return RiskSpec(fraud_share, str(path), stolen_share), []


def load_rules(path: str) -> Any:
    """The rule set (limits.risk), or a SimError naming the file and its problems."""
    from limits.risk import load_risk_rules

    try:
        return load_risk_rules(path)
    except Exception as error:  # RiskRulesError, OSError: refused before the run
        raise SimError(f"{path}: {error}") from error


def new_kernel() -> Any:
    """The production kernel (cext.risk; `TALLY_KERNEL=reference` picks its twin
    explicitly, as the engine's kernels do: never a silent fallback)."""
    return new_risk_kernel()


def reference_kernel() -> Any:
    from limits.risk_reference import ReferenceRiskKernel

    return ReferenceRiskKernel()


def load_kernel(kernel: Any, program: bytes, lists: list[tuple[int, bytes]]) -> None:
    kernel.set_program(program)
    for list_id, keys in lists:
        kernel.set_list(list_id, keys)


def silenced_program(rules: Any) -> tuple[bytes, str]:
    """The planted bug: the program with one rule that can never fire (its code mask
    cleared): the stolen-device rule (NEW_DEVICE) if there is one, else the first rule.
    Returns (program, the silenced rule's name)."""
    program = bytearray(rules.program())
    types = [RULE.unpack_from(program, i * RULE.size)[0] for i in range(len(program) // RULE.size)]
    index = next((i for i, kind in enumerate(types) if kind == RuleType.NEW_DEVICE), 0)
    fields = list(RULE.unpack_from(program, index * RULE.size))
    fields[5] = 0  # codes
    RULE.pack_into(program, index * RULE.size, *fields)
    return bytes(program), rules.names[index]


@dataclass
class FraudPlan:
    """Which requests are fraud, and what each becomes: a pure function of (seed, seq).

    A request is fraud with probability `share`; a fraud request is a stolen-device
    posting with probability `stolen_share`, else a mule payment. Stolen-device requests
    of the same `EPISODE_S` slot of the window are spread over that slot's episodes
    (about STOLEN_POSTINGS each): one victim, one thief device, one payee; mule payments
    of the same hour over that hour's mules (about MULE_POSTINGS payers each)."""

    seed: int
    account_seed: int
    users: int
    share: float
    stolen_share: float
    step_ns: int
    step_first_seq: array[int]
    steps: int = 0
    episodes_cache: dict[tuple[str, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.steps = len(self.step_first_seq) - 1
        self.salt = mix64(self.seed ^ 0xF4A0D)

    def is_fraud(self, seq: int) -> bool:
        return self.share > 0 and _unit(seq ^ self.salt) < self.share

    def kind(self, seq: int) -> str:
        return "stolen_device" if _unit(seq * 3 + self.salt) < self.stolen_share else "mule"

    def _slot(self, seq: int, span_s: int) -> int:
        step = bisect.bisect_right(self.step_first_seq, seq, 0, self.steps + 1) - 1
        return step * self.step_ns // (span_s * NS_PER_S)

    def _episodes(self, kind: str, slot: int, span_s: int, per_episode: int) -> int:
        cached = self.episodes_cache.get((kind, slot))
        if cached is not None:
            return cached
        span_steps = span_s * NS_PER_S // self.step_ns
        first = self.step_first_seq[min(self.steps, slot * span_steps)]
        end = self.step_first_seq[min(self.steps, (slot + 1) * span_steps)]
        share = self.stolen_share if kind == "stolen_device" else 1.0 - self.stolen_share
        expected = (end - first) * self.share * share
        count = max(1, round(expected / per_episode))
        self.episodes_cache[(kind, slot)] = count
        return count

    def episode(self, seq: int) -> tuple[str, int]:
        """(kind, episode number) of a fraud request."""
        kind = self.kind(seq)
        if kind == "stolen_device":
            span, per = EPISODE_S, STOLEN_POSTINGS
        else:
            span, per = MULE_EPISODE_S, MULE_POSTINGS
        slot = self._slot(seq, span)
        count = self._episodes(kind, slot, span, per)
        number = mix64(seq * 5 + self.salt) % count
        return kind, (slot << 20) | number

    def user_of(self, kind: str, episode: int, role: str) -> int:
        salt = {"victim": 1, "payee": 2, "mule": 3}[role]
        base = 0x5701E if kind == "stolen_device" else 0x3013E
        return mix64(mix64(episode * 16 + salt) ^ self.salt ^ base) % self.users

    def account(self, user: int) -> int:
        return int(simgen.account_id(self.account_seed, simgen.TAG_CLASS_II, user))

    def thief_keys(self, episode: int) -> tuple[int, int]:
        """(device key, IP key) of a stolen-device episode's thief."""
        bits = mix64(episode ^ self.salt ^ 0x7E1F)
        return bits, mix64(bits ^ 0x1B)

    def rewrite(self, records: bytearray, offset: int, seq: int) -> str:
        """Rewrite request `seq`'s record (at record index `offset`) into its fraud in
        place; returns the kind."""
        kind, episode = self.episode(seq)
        base = offset * TRANSFER_SIZE
        if kind == "stolen_device":
            debit_user = self.user_of(kind, episode, "victim")
            credit_user = self.user_of(kind, episode, "payee")
            amount = STOLEN_MIN_MINOR + mix64(seq ^ self.salt ^ 0xA3) % STOLEN_SPAN_MINOR
        else:
            debit_user = mix64(seq * 7 + self.salt) % self.users
            credit_user = self.user_of(kind, episode, "mule")
            amount = MULE_MEDIAN_MINOR // 2 + mix64(seq ^ self.salt ^ 0xB5) % MULE_MEDIAN_MINOR
        if credit_user == debit_user:
            credit_user = (credit_user + 1) % self.users
        debit, credit = self.account(debit_user), self.account(credit_user)
        _IDS.pack_into(
            records, base + 16, debit & _MASK64, debit >> 64, credit & _MASK64, credit >> 64
        )
        _AMOUNT.pack_into(records, base + 64, amount)
        _code, flags, channel = _CODE_FLAGS_CHANNEL.unpack_from(records, base + 86)
        if channel not in _CHANNELS_MOBILE:
            channel = _CHANNEL_APP
        _CODE_FLAGS_CHANNEL.pack_into(records, base + 86, TransferCode.TRANSFER, flags, channel)
        return kind


@dataclass
class Screened:
    """What the stage did with one batch, in batch order."""

    keep: bytearray  # 1: goes to the engine (as posted or rewritten as a hold)
    results: bytearray  # the refusal code of each refused attempt (0 for kept ones)
    kept: int
    decided: list[int] = field(default_factory=list)  # the requests decided in this batch


@dataclass
class Process:
    """The risk stage of one DC's Tally process: the kernel (the deployed program) and
    the checker's twin (the approved one), fed the same postings."""

    kernel: Any
    reference: Any


class DataCenterView(Protocol):
    """What the stage reads of a data center (sim/cluster.py `DataCenter`)."""

    name: str
    applied_lsn: int

    @property
    def ledger(self) -> Any: ...

    def epoch_at(self, lsn: int) -> int | None: ...


@dataclass
class RiskTotals:
    """The report's `risk` section (part of the digest). Counts are per request (a
    request's retries reuse its decision)."""

    screened: int = 0
    fired: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)
    rules_fired: dict[str, int] = field(default_factory=dict)
    fraud_total: int = 0
    fraud_stopped: int = 0  # blocked, challenged and not met, held for delay or review
    fraud_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    legit_total: int = 0
    legit_challenged: int = 0
    legit_held: int = 0
    legit_blocked: int = 0
    reports: int = 0  # large-value reports (decisions with report set)
    mismatches: int = 0
    mismatch_examples: list[str] = field(default_factory=list)


def _count(table: dict[str, int], key: str, by: int = 1) -> None:
    table[key] = table.get(key, 0) + by


class RiskStage:
    """The bank's risk stage as the simulator runs it: the kernel, the rules, the
    decisions per request, and the checker beside it."""

    def __init__(
        self,
        spec: RiskSpec,
        plan: FraudPlan,
        request_count: int,
        *,
        primary: str = "dc1",
        plant_bug: str | None = None,
    ) -> None:
        """`primary`: the DC whose Tally process screens at the start (warmed up)."""
        self.spec = spec
        self.plan = plan
        self.rules = load_rules(spec.rules_path)
        approved = self.rules.program()
        lists = self.rules.list_values()
        self.silenced = ""
        deployed = approved
        if plant_bug == PLANTED_SILENT_RULE:
            deployed, self.silenced = silenced_program(self.rules)
        self.deployed, self.approved, self.lists = deployed, approved, lists
        self.processes: dict[str, Process] = {primary: self._new_process()}
        self.kernel = self.processes[primary].kernel  # the initial primary's (warm-up, report)
        self.reference = self.processes[primary].reference
        self.rebuilds: list[dict[str, Any]] = []
        # Per request: where its decision was recorded, (epoch << LSN_BITS) | lsn of the
        # entry that carried it (0: none, a batch all refused, answered at once); and the
        # fired rules of decisions a rule fired on (to count a forgotten decision out).
        self.carried_at = array("Q", bytes(8 * request_count))
        self.fired_of: dict[int, tuple[int, int, bool]] = {}
        self.forgotten = 0
        self.replay_out = bytearray(VERDICT.size * BATCH_SIZE_MAX)
        self.names: tuple[str, ...] = tuple(self.rules.names)
        self.actions = bytearray(request_count)
        self.fraud_kind = bytearray(request_count)  # 0 legit, 1 stolen, 2 mule (decided ones)
        self.totals_ = RiskTotals(
            by_outcome={name: 0 for name in ("clean", *ACTION_NAMES[1:], "challenge_met")},
            rules_fired={name: 0 for name in self.names},
            fraud_by_kind={
                kind: {"total": 0, "stopped": 0, **{name: 0 for name in ACTION_NAMES[1:]}}
                for kind in FRAUD_KINDS
            },
        )
        self.hold_timeout_s = {
            HOLD_DELAY: int(self.rules.delay_s) + DAY_S,
            HOLD_REVIEW: int(self.rules.review_s) + DAY_S,
        }
        self.warmed = 0
        self.verdicts = bytearray(VERDICT.size * 1024)
        self.expected = bytearray(VERDICT.size * 1024)

    # --- processes: failovers and restarts -------------------------------------------

    def _new_process(self) -> Process:
        kernel, reference = new_kernel(), reference_kernel()
        load_kernel(kernel, self.deployed, self.lists)
        load_kernel(reference, self.approved, self.lists)
        return Process(kernel, reference)

    def restart(self, dc: DataCenterView, now_ns: int) -> int:
        """`dc`'s Tally process starts serving (a promotion, a restart believing it is the
        primary): its counters are rebuilt as the server rebuilds them
        (`Risk.rebuild_counters`): cleared, then the newest records of `dc`'s own log
        replayed through the shared `replay_log` (kernel and checker alike). Returns the
        postings replayed."""
        process = self.processes.get(dc.name)
        if process is None:
            process = self.processes[dc.name] = self._new_process()
        ledger = dc.ledger
        fed = 0
        for evaluator in (process.kernel, process.reference):
            evaluator.clear()
            fed = 0
            for first, stop in replay_ranges(ledger.log_tail, ledger.log_count):
                records = ledger.log_records(first, stop)
                fed += replay_log(
                    evaluator, records, stop - first, self._replay_rows, self.replay_out
                )
        self.rebuilds.append({"dc": dc.name, "at_s": round(now_ns / NS_PER_S, 3), "postings": fed})
        return fed

    def stop(self, name: str) -> None:
        """`name`'s process is gone (its DC died): its counters with it."""
        self.processes.pop(name, None)

    def _replay_rows(self, records: bytes, count: int, now_s: int) -> bytes:
        """`replay_log`'s context builder: what a logged record tells (the holder's keys,
        the credit account as the counterparty, the local time; `replay_log` clears the
        device and IP and sets the second factor)."""
        return b"".join(
            self._context(records, index, 0, 0, now_s, True, logged=True) for index in range(count)
        )

    def carried(self, screened: Screened, lsn: int, epoch: int) -> None:
        """The decisions of `screened` were recorded in the entry (lsn, epoch) (the
        service stages them into the posting's group): durable where that entry is."""
        mark = epoch << LSN_BITS | lsn
        carried_at = self.carried_at
        for seq in screened.decided:
            carried_at[seq] = mark

    def _durable_on(self, dc: DataCenterView, seq: int) -> bool:
        mark = self.carried_at[seq]
        if not mark:
            return True
        lsn = mark & LSN_MASK
        return dc.applied_lsn >= lsn and dc.epoch_at(lsn) == mark >> LSN_BITS

    # --- contexts ---------------------------------------------------------------------

    def _customer_keys(self, account_lo: int, account_hi: int) -> tuple[int, int, int, int]:
        """(customer, device, ip, resident) of the holder of an account: the customer key
        is the account's (one Class II per user), the rest derived from it."""
        customer = mix64(account_lo ^ mix64(account_hi))
        return customer, mix64(customer ^ 0xDE1), mix64(customer ^ 0x1F), mix64(customer ^ 0x2E5)

    def _context(
        self,
        records: bytes | bytearray,
        index: int,
        seq: int,
        fraud: int,
        now_s: int,
        factor: bool,
        *,
        logged: bool = False,
    ) -> bytes:
        """The CONTEXT row of posting `index` (request `seq`); `logged`: of a record read
        back from a log (a rebuild): the beneficiary card of an external transfer is not
        in it (the credit account stands for the counterparty, as in the server)."""
        base = index * TRANSFER_SIZE
        debit_lo, debit_hi, credit_lo, credit_hi = _IDS.unpack_from(records, base + 16)
        code = _CODE_FLAGS_CHANNEL.unpack_from(records, base + 86)[0]
        local_s = (now_s + LOCAL_OFFSET_S) % DAY_S
        if debit_hi & 0xFF == _TAG_INTERNAL:
            # Money coming in (a top-up, a receipt): no customer debited; the device is the
            # receiving customer's own.
            _, device, ip, _ = self._customer_keys(credit_lo, credit_hi)
            return CONTEXT.pack(0, device, ip, mix64(credit_lo ^ credit_hi), 0, local_s, factor)
        customer, device, ip, resident = self._customer_keys(debit_lo, debit_hi)
        if fraud == 1:
            _, episode = self.plan.episode(seq)
            device, ip = self.plan.thief_keys(episode)
        if code == TransferCode.EXTERNAL_TRANSFER_OUT and not logged:
            counterparty = mix64(customer ^ (1 + seq % 3) * 0xCA7D)  # one of their 3 payees
        else:
            counterparty = mix64(credit_lo ^ mix64(credit_hi))
        return CONTEXT.pack(customer, device, ip, counterparty, resident, local_s, factor)

    # --- warm-up ----------------------------------------------------------------------

    def warm_up(self, before_s: int) -> None:
        """Every customer's own device seen once at `before_s` (older than every rule's
        window: `warm_up_at`), with a second factor, so it is not a new device."""
        amount = max(
            [rule.amount_min_minor for rule in self.rules.rules if rule.type == RuleType.NEW_DEVICE]
            or [1]
        )
        amount = max(1, amount)
        users = self.plan.users
        records = bytearray(TRANSFER_SIZE * min(users, SCREEN_CHUNK))
        for first in range(0, users, SCREEN_CHUNK):
            count = min(SCREEN_CHUNK, users - first)
            contexts = bytearray()
            for i in range(count):
                user = first + i
                debit = self.plan.account(user)
                credit = self.plan.account((user + 1) % users)
                base = i * TRANSFER_SIZE
                records[base : base + TRANSFER_SIZE] = bytes(TRANSFER_SIZE)
                struct.pack_into("<QQ", records, base, 0xFFFF_0000 + user + 1, 0x51A3_0000)
                _IDS.pack_into(
                    records, base + 16, debit & _MASK64, debit >> 64, credit & _MASK64, credit >> 64
                )
                _AMOUNT.pack_into(records, base + 64, amount)
                _CODE_FLAGS_CHANNEL.pack_into(records, base + 86, TransferCode.TRANSFER, 0, 2)
                contexts += self._context(records, i, 0, 0, before_s, True)
            view = memoryview(records)[: count * TRANSFER_SIZE]
            out = bytearray(VERDICT.size * count)
            self.kernel.screen(view, bytes(contexts), count, before_s, out)
            self.reference.screen(view, bytes(contexts), count, before_s, out)
        self.warmed = users

    def warm_up_at(self, start_s: int) -> int:
        """When the warm-up happens: before every rule's window (and a day more)."""
        longest = max([int(rule.window_s) for rule in self.rules.rules] or [0])
        return start_s - longest - DAY_S

    # --- screening --------------------------------------------------------------------

    def screen(
        self,
        records: bytearray,
        count: int,
        seqs: list[int],
        now_ns: int,
        dc: DataCenterView,
    ) -> Screened:
        """Screen one batch primary `dc` is about to form (records in batch order, one seq
        each) with `dc`'s process: fraud rewritten, verdicts applied (holds rewritten in
        place), refused ones marked; retries of decided requests reuse the decision if it
        is durable on `dc` (else it is forgotten and the request screened again)."""
        now_s = now_ns // NS_PER_S
        plan = self.plan
        actions = self.actions
        process = self.processes.get(dc.name)
        if process is None:  # never without a promotion or restart first; as the server
            self.restart(dc, now_ns)
            process = self.processes[dc.name]
        keep = bytearray(count)
        results = bytearray(count)
        fresh: list[int] = []
        for index in range(count):
            seq = seqs[index]
            if plan.is_fraud(seq):
                kind = plan.rewrite(records, index, seq)
                self.fraud_kind[seq] = 1 if kind == "stolen_device" else 2
            if actions[seq] != UNDECIDED and not self._durable_on(dc, seq):
                self._forget(seq)
            if actions[seq] == UNDECIDED:
                fresh.append(index)
        decided = [seqs[index] for index in fresh]
        if fresh:
            self._decide(process, records, fresh, seqs, now_s)
        kept = 0
        for index in range(count):
            action = actions[seqs[index]]
            if action == REFUSED_CHALLENGE:
                results[index] = RESULT_RISK_CHALLENGE
            elif action == REFUSED_BLOCK:
                results[index] = RESULT_RISK_BLOCKED
            else:
                keep[index] = 1
                kept += 1
                if action in (HOLD_DELAY, HOLD_REVIEW):
                    self._hold(records, index, self.hold_timeout_s[action])
        return Screened(keep, results, kept, decided)

    def _hold(self, records: bytearray, index: int, timeout_s: int) -> None:
        base = index * TRANSFER_SIZE
        code, flags, channel = _CODE_FLAGS_CHANNEL.unpack_from(records, base + 86)
        flags |= TransferFlags.PENDING
        _CODE_FLAGS_CHANNEL.pack_into(records, base + 86, code, flags, channel)
        _TIMEOUT.pack_into(records, base + 80, timeout_s)

    def _run(
        self,
        process: Process,
        records: bytes,
        contexts: bytes,
        count: int,
        now_s: int,
        seqs: list[int],
    ) -> bytes:
        """Both evaluators on the same postings; the stage's verdicts, the mismatches noted."""
        size = VERDICT.size * count
        if len(self.verdicts) < size:
            self.verdicts = bytearray(size * 2)
            self.expected = bytearray(size * 2)
        process.kernel.screen(records, contexts, count, now_s, self.verdicts)
        process.reference.screen(records, contexts, count, now_s, self.expected)
        got, want = bytes(self.verdicts[:size]), bytes(self.expected[:size])
        if got != want:
            totals = self.totals_
            for i in range(count):
                row = slice(i * VERDICT.size, (i + 1) * VERDICT.size)
                if got[row] != want[row]:
                    totals.mismatches += 1
                    if len(totals.mismatch_examples) < EXAMPLES_MAX:
                        totals.mismatch_examples.append(
                            f"request {seqs[i]}: stage {self._describe(got, i)},"
                            f" rules as approved {self._describe(want, i)}"
                        )
        return got

    def _describe(self, verdicts: bytes, index: int) -> str:
        outcome, _report, _met, mask = VERDICT.unpack_from(verdicts, index * VERDICT.size)
        fired = [self.names[bit] for bit in range(len(self.names)) if mask >> bit & 1]
        return f"{Outcome(outcome).name.lower()} ({', '.join(fired) or 'nothing fired'})"

    def _decide(
        self, process: Process, records: bytearray, fresh: list[int], seqs: list[int], now_s: int
    ) -> None:
        count = len(fresh)
        chunk = bytearray(TRANSFER_SIZE * count)
        contexts = bytearray(CONTEXT.size * count)
        fresh_seqs = [seqs[index] for index in fresh]
        for position, index in enumerate(fresh):
            chunk[position * TRANSFER_SIZE : (position + 1) * TRANSFER_SIZE] = records[
                index * TRANSFER_SIZE : (index + 1) * TRANSFER_SIZE
            ]
        for position, seq in enumerate(fresh_seqs):
            contexts[position * CONTEXT.size : (position + 1) * CONTEXT.size] = self._context(
                chunk, position, seq, self.fraud_kind[seq], now_s, False
            )
        verdicts = self._run(process, bytes(chunk), bytes(contexts), count, now_s, fresh_seqs)
        retry: list[int] = []
        for position, seq in enumerate(fresh_seqs):
            outcome, report, _met, mask = VERDICT.unpack_from(verdicts, position * VERDICT.size)
            if outcome == Outcome.CHALLENGE and not self.fraud_kind[seq]:
                retry.append(position)  # the customer answers the challenge: retried below
                continue
            self._record(seq, outcome, report, mask, challenged=False)
        if retry:
            # The legitimate customers' retries with a second factor (the same requests).
            again = bytearray(TRANSFER_SIZE * len(retry))
            again_contexts = bytearray(CONTEXT.size * len(retry))
            again_seqs = [fresh_seqs[position] for position in retry]
            for i, position in enumerate(retry):
                again[i * TRANSFER_SIZE : (i + 1) * TRANSFER_SIZE] = chunk[
                    position * TRANSFER_SIZE : (position + 1) * TRANSFER_SIZE
                ]
                again_contexts[i * CONTEXT.size : (i + 1) * CONTEXT.size] = self._context(
                    again, i, again_seqs[i], 0, now_s, True
                )
            verdicts = self._run(
                process, bytes(again), bytes(again_contexts), len(retry), now_s, again_seqs
            )
            for i, seq in enumerate(again_seqs):
                outcome, report, _met, mask = VERDICT.unpack_from(verdicts, i * VERDICT.size)
                self._record(seq, outcome, report, mask, challenged=True)

    def _record(self, seq: int, outcome: int, report: int, mask: int, *, challenged: bool) -> None:
        action = {
            Outcome.ALLOW: ALLOW,
            Outcome.CHALLENGE: REFUSED_CHALLENGE,
            Outcome.DELAY: HOLD_DELAY,
            Outcome.REVIEW: HOLD_REVIEW,
            Outcome.BLOCK: REFUSED_BLOCK,
        }[Outcome(outcome)]
        self.actions[seq] = action
        self.carried_at[seq] = 0  # until the entry carrying it is formed (`carried`)
        if mask or report or challenged:
            self.fired_of[seq] = (mask, report, challenged)
        self._tally(seq, action, report, mask, challenged, 1)

    def _forget(self, seq: int) -> None:
        """A decision the screening DC does not hold (the entry carrying it was lost): the
        request is screened again; its first decision is counted out."""
        mask, report, challenged = self.fired_of.pop(seq, (0, 0, False))
        self._tally(seq, self.actions[seq], report, mask, challenged, -1)
        self.actions[seq] = UNDECIDED
        self.forgotten += 1

    def _tally(
        self, seq: int, action: int, report: int, mask: int, challenged: bool, by: int
    ) -> None:
        """Count one decision in the totals (`by` = 1), or out of them (-1)."""
        totals = self.totals_
        fraud = self.fraud_kind[seq]
        totals.screened += by
        if mask:
            totals.fired += by
            for bit in range(len(self.names)):
                if mask >> bit & 1:
                    totals.rules_fired[self.names[bit]] += by
        if report:
            totals.reports += by
        if challenged and action == ALLOW:
            _count(totals.by_outcome, "challenge_met", by)
        elif action == ALLOW and not mask:
            _count(totals.by_outcome, "clean", by)
        else:
            _count(totals.by_outcome, ACTION_NAMES[action], by)
        if fraud:
            kind = FRAUD_KINDS[fraud - 1]
            totals.fraud_total += by
            by_kind = totals.fraud_by_kind[kind]
            by_kind["total"] += by
            by_kind[ACTION_NAMES[action]] += by
            if action != ALLOW:
                totals.fraud_stopped += by
                by_kind["stopped"] += by
        else:
            totals.legit_total += by
            if challenged:
                totals.legit_challenged += by
            if action in (HOLD_DELAY, HOLD_REVIEW):
                totals.legit_held += by
            elif action == REFUSED_BLOCK:
                totals.legit_blocked += by

    # --- the report -------------------------------------------------------------------

    def totals(self) -> RiskTotals:
        return self.totals_

    def report(self) -> dict[str, Any]:
        """`report["risk"]`: spec, rule-set version and digest, screened, fired,
        decisions by outcome, fired rules by name, fraud (total, stopped, by kind, share
        stopped), legitimate (total, challenged, held, blocked, false-positive share),
        large-value reports, checker mismatches (and the first examples), the counter
        rebuilds of promoted or restarted primaries (DC, time, postings replayed) and
        the decisions forgotten (not durable on the DC a retry reached)."""
        t = self.totals_
        flagged = t.legit_challenged + t.legit_held + t.legit_blocked
        return {
            "spec": self.spec.to_json(),
            "rules_version": int(self.rules.version),
            "rules_digest": str(self.rules.digest),
            "rules": len(self.names),
            "kernel": type(self.kernel).__name__,
            "checker": type(self.reference).__name__,
            "warmed_customers": self.warmed,
            "screened": t.screened,
            "fired": t.fired,
            "by_outcome": dict(t.by_outcome),
            "rules_fired": dict(t.rules_fired),
            "rules_silent": [name for name, count in t.rules_fired.items() if not count],
            "fraud": {
                "total": t.fraud_total,
                "stopped": t.fraud_stopped,
                "stopped_share": round(t.fraud_stopped / t.fraud_total, 6)
                if t.fraud_total
                else None,
                "by_kind": {kind: dict(value) for kind, value in t.fraud_by_kind.items()},
            },
            "legitimate": {
                "total": t.legit_total,
                "challenged": t.legit_challenged,
                "held": t.legit_held,
                "blocked": t.legit_blocked,
                "false_positive_share": round(flagged / t.legit_total, 6)
                if t.legit_total
                else None,
            },
            "large_value_reports": t.reports,
            "mismatches": t.mismatches,
            "mismatch_examples": list(t.mismatch_examples),
            "planted_silent_rule": self.silenced or None,
            "rebuilds": [dict(rebuild) for rebuild in self.rebuilds],
            "decisions_forgotten": self.forgotten,
        }

    def memory(self) -> dict[str, int]:
        """Machine-dependent figures (outside the digest)."""
        figures = {
            "decisions_bytes": len(self.actions) + len(self.fraud_kind) + 8 * len(self.carried_at)
        }
        for name in ("entries", "memory_bytes"):
            values = [getattr(process.kernel, name, None) for process in self.processes.values()]
            if all(method is not None for method in values):
                figures[f"kernel_{name}"] = sum(int(method()) for method in values if method)
        return figures


def default_rules_path() -> Path:
    return Path(DEFAULT_RISK_PATH)
