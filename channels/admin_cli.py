"""`tally admin ...`: the operators' command line, a client of the server's `/v1/admin/` routes.

Every change to a parameter (limit rules, deposit products, risk rules, the LPR table,
the channel registry) and every sensitive operation (a large counter reversal, a
password unlock, the release or return of a payment held for review, a credit limit)
is a request by one operator (the maker) that another operator with the right role
(the checker) approves or rejects (`core/services/approvals.py`, `docs/approvals.md`).
This command makes and decides those requests and reads what the server keeps:

    tally admin parameters risk --text > risk.toml      # the rule set in force
    $EDITOR risk.toml
    tally admin request risk --file risk.toml --reason "mule rule: 20 payers an hour"
    tally admin list --state pending
    tally admin show A0000000001f3  # the diff, the maker, the state
    tally admin approve A0000000001f3 --reason "checked with fraud ops"   # another operator
    tally admin request-operation release_review --payload '{"transfer_id": "..."}'
    tally admin audit / decisions --outcome review / reports --date 2026-03-20

Who signs: `--operator NAME --key-id K --secret-file F` (or TALLY_OPERATOR,
TALLY_OPERATOR_KEY_ID, TALLY_OPERATOR_SECRET_FILE / TALLY_OPERATOR_SECRET), against
`--server URL` (TALLY_SERVER, default http://127.0.0.1:8080). `--dev` takes the key
and the secret of NAME from the DEVELOPMENT registry shipped in core/data/operators.toml
(only a `tally serve --dev` server accepts those). Requests are signed as a channel's
are (`channels/http/signing.py`) with the channel name `op:NAME`, which selects the
operator registry on the server; the server records who, what, when and from where.

Output: a short human form, or with `--json` the server's JSON answer (one object
per line; on a refusal the problem document). Exit status: 0 done; 1 refused by the
server (not permitted, self-approval, duplicate, not pending, invalid parameter text
with every error and its line, stale base version, ...); 2 bad arguments or local
files (no operator, an unreadable secret or parameter file, bad JSON); 3 the server
did not accept the signature (401: unknown operator, wrong key or secret, clock
skew); 4 not found (no such request, decision or parameter kind); 5 the server could
not be reached or failed (5xx, an answer that is not JSON).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from channels.client import TallyClient

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAUTHENTICATED = 3
EXIT_NOT_FOUND = 4
EXIT_UNAVAILABLE = 5

SERVER_DEFAULT = "http://127.0.0.1:8080"
TIMEOUT_S_DEFAULT = 30.0
OPERATOR_CHANNEL_PREFIX = "op:"  # the Authorization channel of an operator: "op:NAME"
PARAMETER_KINDS = ("limits", "deposits", "risk", "lpr", "loans", "channels")
OPERATION_KINDS = (
    "reversal",
    "unlock_password",
    "release_review",
    "return_review",
    "credit_limit",
)
STATES = ("pending", "approved", "applied", "rejected", "expired", "failed")
OUTCOMES = ("allow", "challenge", "delay", "review", "block")
APPROVAL_ID = re.compile(r"A[0-9a-f]{12}")


class UsageError(Exception):
    """A problem on this side (arguments, files, credentials): exit status 2."""


@dataclass(frozen=True)
class Credentials:
    """Who signs: the operator's name, key id and secret, and the server."""

    server: str
    operator: str
    key_id: str
    secret: bytes


@dataclass(frozen=True)
class Answer:
    """The server's answer to one request: status and parsed JSON body (None: not JSON)."""

    status: int
    body: Any


# --- arguments ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`tally admin [common options] SUBCOMMAND [options]`; the common options may also
    follow the subcommand."""
    _add_common(parser, suppress=False)
    subparsers = parser.add_subparsers(
        title="subcommands", metavar="SUBCOMMAND", dest="admin_command", required=True
    )
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, suppress=True)

    def sub(name: str, summary: str, handler: Callable[..., int]) -> argparse.ArgumentParser:
        subparser = subparsers.add_parser(name, help=summary, description=summary, parents=[common])
        subparser.set_defaults(admin_handler=handler)
        return subparser

    request = sub("request", "request a parameter change: the new file, for a checker", run_request)
    request.add_argument("kind", choices=PARAMETER_KINDS, help="the parameter kind")
    request.add_argument("--file", required=True, help="the new parameter file (TOML)")
    request.add_argument(
        "--object", default=None, help="what is changed (default: the kind itself)"
    )
    request.add_argument(
        "--base-version",
        type=int,
        default=None,
        help="the version the file was edited from (default: the version in force now)",
    )
    request.add_argument(
        "--apply-at",
        type=_instant,
        default=None,
        help="apply at this time once approved (ISO 8601 with an offset; default: at once)",
    )
    request.add_argument("--reason", default="", help="why (kept with the request)")

    operation = sub(
        "request-operation", "request a sensitive operation (reversal, release, ...)",
        run_request_operation,
    )  # fmt: skip
    operation.add_argument("kind", choices=OPERATION_KINDS, help="the operation kind")
    operation.add_argument(
        "--payload", required=True, type=_json_object, help="the operation's JSON object"
    )
    operation.add_argument(
        "--object", default=None, help="what it acts on (default: from the payload)"
    )
    operation.add_argument("--apply-at", type=_instant, default=None, help="as for request")
    operation.add_argument("--reason", default="", help="why (kept with the request)")

    listing = sub("list", "list approval requests (newest first)", run_list)
    listing.add_argument("--state", choices=STATES, default=None)
    listing.add_argument("--kind", choices=PARAMETER_KINDS + OPERATION_KINDS, default=None)

    show = sub("show", "one request: maker, state, the diff or payload, the result", run_show)
    show.add_argument("id", help="the request id (A + 12 hex)")

    approve = sub("approve", "approve a request made by another operator", run_approve)
    approve.add_argument("id")
    approve.add_argument("--reason", default="")

    reject = sub("reject", "reject a request (kept, with the reason)", run_reject)
    reject.add_argument("id")
    reject.add_argument("--reason", required=True)

    parameters = sub("parameters", "the version of a parameter in force and its history",
                     run_parameters)  # fmt: skip
    parameters.add_argument("kind", choices=PARAMETER_KINDS)
    parameters.add_argument(
        "--text", action="store_true", help="print only the text in force (to edit it)"
    )

    audit = sub("audit", "the operators' audit log: who did what, when, from where", run_audit)
    audit.add_argument("--since", type=_instant, default=None, help="ISO 8601 instant")
    audit.add_argument("--limit", type=int, default=100)

    decisions = sub("decisions", "risk decisions (the rules that fired, their inputs)",
                    run_decisions)  # fmt: skip
    decisions.add_argument("--outcome", choices=OUTCOMES, default=None)
    decisions.add_argument("--since", type=_instant, default=None, help="ISO 8601 instant")
    decisions.add_argument("--limit", type=int, default=100)

    reports = sub("reports", "large-value reports of a business day", run_reports)
    reports.add_argument("--date", required=True, type=_date, help="YYYY-MM-DD")


def _add_common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every subcommand takes. On the subcommands they default to SUPPRESS, so
    one given before the subcommand is not overwritten by the subcommand's default."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--server", default=default(None), help="TALLY_SERVER; " + SERVER_DEFAULT)
    parser.add_argument("--operator", default=default(None), help="TALLY_OPERATOR")
    parser.add_argument("--key-id", default=default(None), help="TALLY_OPERATOR_KEY_ID")
    parser.add_argument(
        "--secret-file",
        default=default(None),
        help="file holding the operator's secret (TALLY_OPERATOR_SECRET_FILE)",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        default=default(False),
        help="the DEVELOPMENT key and secret of --operator from core/data/operators.toml",
    )
    parser.add_argument(
        "--timeout-s", type=float, default=default(TIMEOUT_S_DEFAULT), help="per request"
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="print the server's JSON"
    )


def _instant(text: str) -> datetime.datetime:
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 instant: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no offset: say which time zone (2026-03-20T09:00:00+08:00)"
        )
    return value


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("the payload must be a JSON object")
    return value


# --- running --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Resolve the credentials, run the subcommand; map every failure to its exit status."""
    import httpx

    try:
        credentials = resolve_credentials(args, os.environ)
        handler: Callable[[AdminClient, argparse.Namespace], int] = args.admin_handler
        with AdminClient(credentials, args.timeout_s) as client:
            return handler(client, args)
    except UsageError as error:
        print(f"tally admin: {error}", file=sys.stderr)
        return EXIT_USAGE
    except httpx.HTTPError as error:
        server = getattr(args, "server", None) or os.environ.get("TALLY_SERVER", SERVER_DEFAULT)
        print(f"tally admin: cannot reach {server}: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def resolve_credentials(args: argparse.Namespace, env: Mapping[str, str]) -> Credentials:
    """The operator, key and secret from the options, else the environment; `--dev` reads
    the key and secret from the development registry. Raises UsageError naming what is
    missing."""
    server = args.server or env.get("TALLY_SERVER") or SERVER_DEFAULT
    operator = args.operator or env.get("TALLY_OPERATOR")
    if not operator:
        raise UsageError("no operator: give --operator NAME (or set TALLY_OPERATOR)")
    if args.dev:
        dev_key_id, dev_secret = development_secret(operator)
        return Credentials(server, operator, args.key_id or dev_key_id, dev_secret)
    key_id = args.key_id or env.get("TALLY_OPERATOR_KEY_ID")
    if not key_id:
        raise UsageError("no key id: give --key-id K (or set TALLY_OPERATOR_KEY_ID)")
    secret_file = args.secret_file or env.get("TALLY_OPERATOR_SECRET_FILE")
    if secret_file:
        try:
            with open(secret_file, "rb") as file:
                secret = file.read().strip()
        except OSError as error:
            raise UsageError(f"cannot read the secret file {secret_file}: {error}") from None
        if not secret:
            raise UsageError(f"the secret file {secret_file} is empty")
    elif env.get("TALLY_OPERATOR_SECRET"):
        secret = env["TALLY_OPERATOR_SECRET"].encode()
    else:
        raise UsageError(
            "no secret: give --secret-file F (or set TALLY_OPERATOR_SECRET_FILE or"
            " TALLY_OPERATOR_SECRET)"
        )
    return Credentials(server, operator, key_id, secret)


def development_secret(operator: str) -> tuple[str, bytes]:
    """The first key id and secret of `operator` in the shipped DEVELOPMENT registry."""
    from core.data import DEFAULT_OPERATORS_PATH

    try:
        with open(DEFAULT_OPERATORS_PATH, "rb") as file:
            registry = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"cannot read {DEFAULT_OPERATORS_PATH}: {error}") from None
    entry = registry.get("operators", {}).get(operator)
    if entry is None:
        names = ", ".join(sorted(registry.get("operators", {}))) or "none"
        raise UsageError(
            f"no operator {operator!r} in the development registry {DEFAULT_OPERATORS_PATH}"
            f" (there: {names})"
        )
    secrets = entry.get("secrets") or []
    if not secrets:
        raise UsageError(f"operator {operator!r} has no secret in {DEFAULT_OPERATORS_PATH}")
    return str(secrets[0]["key_id"]), str(secrets[0]["secret"]).encode()


class AdminClient:
    """Signed requests to `/v1/admin/` as one operator (channel `op:NAME`); answers parsed."""

    def __init__(self, credentials: Credentials, timeout_s: float) -> None:
        self.credentials = credentials
        self.client = TallyClient(
            credentials.server,
            OPERATOR_CHANNEL_PREFIX + credentials.operator,
            credentials.key_id,
            credentials.secret,
            timeout_s=timeout_s,
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def get(self, path: str, query: Mapping[str, str | int | None] | None = None) -> Answer:
        """GET a path; the query (None values left out) is signed with it."""
        pairs = [(name, str(value)) for name, value in (query or {}).items() if value is not None]
        encoded = urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
        return _answer(self.client.get(path, query=encoded))

    def post(self, path: str, body: Mapping[str, Any] | None) -> Answer:
        """POST a JSON body (None: no body), signed."""
        return _answer(self.client.post(path, dict(body) if body is not None else None))


def _answer(response: Any) -> Answer:
    try:
        body = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        body = None
    return Answer(response.status_code, body)


def exit_status(answer: Answer) -> int:
    """The exit status of a server's answer: 0 for 2xx, then by the problem's status."""
    status = answer.status
    if 200 <= status < 300:
        return EXIT_OK if answer.body is not None or status == 204 else EXIT_UNAVAILABLE
    if status == 401:
        return EXIT_UNAUTHENTICATED
    if status == 404:
        return EXIT_NOT_FOUND
    if 400 <= status < 500:
        return EXIT_REFUSED
    return EXIT_UNAVAILABLE


def finish(answer: Answer, args: argparse.Namespace, human: Callable[[Any], str]) -> int:
    """Print the answer (the server's JSON with --json, else `human(body)`; a refusal as its
    problem document on stderr) and return its exit status."""
    status = exit_status(answer)
    if status == EXIT_OK:
        if args.json:
            print(orjson.dumps(answer.body).decode())
        else:
            print(human(answer.body))
        return status
    if args.json and answer.body is not None:
        print(orjson.dumps(answer.body).decode())
    print(f"tally admin: {describe_problem(answer)}", file=sys.stderr)
    return status


def describe_problem(answer: Answer) -> str:
    """One refusal, readably: status, title and detail, then each error with its line."""
    body = answer.body
    if not isinstance(body, dict):
        return f"the server answered {answer.status} without a problem document"
    kind = str(body.get("type", "")).rsplit("/", 1)[-1]
    lines = [
        f"{answer.status} {kind or 'error'}: {body.get('title', '')}".rstrip(": ")
        + (f" - {body['detail']}" if body.get("detail") else "")
    ]
    for error in body.get("errors") or []:
        if not isinstance(error, dict):
            lines.append(f"  {error}")
        elif "line" in error:  # a parameter file's problem: its detail names the line
            lines.append(f"  {error.get('detail', '')}")
        else:  # a field of the request
            lines.append(f"  {error.get('pointer', '')}: {error.get('detail', '')}")
    return "\n".join(lines)


def _rfc3339(value: datetime.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def _request_body(
    kind: str,
    object_: str | None,
    payload: dict[str, Any],
    apply_at: datetime.datetime | None,
    reason: str,
) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "payload": payload}
    if object_:
        body["object"] = object_
    if apply_at is not None:
        body["apply_at"] = _rfc3339(apply_at)
    if reason:
        body["reason"] = reason
    return body


def run_request(client: AdminClient, args: argparse.Namespace) -> int:
    """Request a parameter change: the whole new file, and the version it was edited from
    (asked of the server when not given, so a change made meanwhile makes it stale)."""
    try:
        with open(args.file, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {args.file}: {error}") from None
    base_version = args.base_version
    if base_version is None:
        current = client.get(f"/v1/admin/parameters/{args.kind}")
        if exit_status(current) != EXIT_OK:
            return finish(current, args, str)
        base_version = int(current.body["current"]["version"])
    payload = {"text": text, "base_version": base_version}
    answer = client.post(
        "/v1/admin/approvals",
        _request_body(args.kind, args.object, payload, args.apply_at, args.reason),
    )
    return finish(answer, args, _approval_text)


def run_request_operation(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.post(
        "/v1/admin/approvals",
        _request_body(args.kind, args.object, args.payload, args.apply_at, args.reason),
    )
    return finish(answer, args, _approval_text)


def run_list(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.get("/v1/admin/approvals", {"state": args.state, "kind": args.kind})
    return finish(answer, args, _approvals_table)


def run_show(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.get(f"/v1/admin/approvals/{_approval_id(args.id)}")
    return finish(answer, args, lambda body: _approval_text(body, full=True))


def run_approve(client: AdminClient, args: argparse.Namespace) -> int:
    body = {"reason": args.reason} if args.reason else None
    answer = client.post(f"/v1/admin/approvals/{_approval_id(args.id)}/approve", body)
    return finish(answer, args, _approval_text)


def run_reject(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.post(
        f"/v1/admin/approvals/{_approval_id(args.id)}/reject", {"reason": args.reason}
    )
    return finish(answer, args, _approval_text)


def run_parameters(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.get(f"/v1/admin/parameters/{args.kind}")
    if args.text and exit_status(answer) == EXIT_OK and not args.json:
        sys.stdout.write(str(answer.body["current"]["text"]))
        return EXIT_OK
    return finish(answer, args, _parameter_text)


def run_audit(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.get("/v1/admin/audit", {"since": _rfc3339(args.since), "limit": args.limit})
    return finish(answer, args, _audit_table)


def run_decisions(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.get(
        "/v1/admin/risk/decisions",
        {"outcome": args.outcome, "since": _rfc3339(args.since), "limit": args.limit},
    )
    return finish(answer, args, _decisions_table)


def run_reports(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.get("/v1/admin/risk/reports", {"date": args.date.isoformat()})
    return finish(answer, args, _decisions_table)


def _approval_id(text: str) -> str:
    """The id as the routes take it; a malformed one is a usage error here, not a 422."""
    if not APPROVAL_ID.fullmatch(text):
        raise UsageError(f"not a request id (A followed by 12 hex digits): {text!r}")
    return text


# --- the human forms ------------------------------------------------------------------------


def _items(body: Any, *names: str) -> list[dict[str, Any]]:
    """The list in an answer: the body itself, or its first field of these names."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for name in names:
            if isinstance(body.get(name), list):
                return list(body[name])
    return []


def _when(ns: Any) -> str:
    if not isinstance(ns, int) or ns <= 0:
        return "-"
    instant = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return instant.isoformat(timespec="seconds").replace("+00:00", "Z")


def _approval_text(body: Any, full: bool = False) -> str:
    """One request: a header line, who and when, and with `full` the diff or payload."""
    if not isinstance(body, dict):
        return str(body)
    request = body.get("approval", body)
    lines = [
        f"{request.get('id')} {request.get('kind')} {request.get('object', '')}"
        f" {request.get('state')}".replace("  ", " "),
        f"  maker:   {request.get('maker')} ({request.get('maker_role', '')})"
        f" at {_when(request.get('made_ns'))}",
    ]
    if request.get("checker"):
        lines.append(
            f"  checker: {request.get('checker')} ({request.get('checker_role', '')})"
            f" at {_when(request.get('decided_ns'))}"
            + (f": {request['decision_reason']}" if request.get("decision_reason") else "")
        )
    if request.get("applied_ns"):
        lines.append(f"  applied: {_when(request.get('applied_ns'))}")
    if request.get("apply_at_ns"):
        lines.append(f"  apply at: {_when(request.get('apply_at_ns'))}")
    if request.get("expires_ns"):
        lines.append(f"  expires: {_when(request.get('expires_ns'))}")
    if request.get("reason"):
        lines.append(f"  reason:  {request.get('reason')}")
    if request.get("result"):
        lines.append(f"  result:  {orjson.dumps(request.get('result')).decode()}")
    if full:
        if request.get("diff"):
            lines.append(str(request["diff"]).rstrip("\n"))
        elif request.get("payload") is not None:
            lines.append("  payload: " + orjson.dumps(request["payload"]).decode())
    return "\n".join(lines)


def _approvals_table(body: Any) -> str:
    rows = _items(body, "approvals", "requests", "items")
    if not rows:
        return "no requests"
    lines = [f"{'id':14} {'kind':16} {'state':9} {'maker':16} {'made':21} object"]
    for row in rows:
        lines.append(
            f"{row.get('id', ''):14} {row.get('kind', ''):16} {row.get('state', ''):9}"
            f" {row.get('maker', ''):16} {_when(row.get('made_ns')):21} {row.get('object', '')}"
        )
    return "\n".join(lines)


def _parameter_text(body: Any) -> str:
    if not isinstance(body, dict):
        return str(body)
    current = body.get("current") or {}
    lines = [
        f"{body.get('kind', '')} version {current.get('version')} digest {current.get('digest')}"
    ]
    for version in _items(body, "versions"):
        lines.append(
            f"  version {version.get('version')} applied {_when(version.get('applied_ns'))}"
            f" by request {version['request_id']} ({version.get('maker')} and"
            f" {version.get('checker')})"
            if version.get("request_id")
            else f"  version {version.get('version')}: the shipped file"
        )
    return "\n".join(lines)


def _audit_table(body: Any) -> str:
    rows = _items(body, "audit", "entries", "items")
    if not rows:
        return "no audit entries"
    return "\n".join(
        f"{_when(row.get('when')):21} {row.get('who', ''):16} {row.get('role', ''):16}"
        f" {row.get('what', ''):12} {row.get('object', '')}  from {row.get('from', '')}"
        for row in rows
    )


def _decisions_table(body: Any) -> str:
    rows = _items(body, "decisions", "reports", "items")
    if not rows:
        return "no decisions"
    lines = []
    for row in rows:
        inputs = row.get("inputs") or {}
        shown = ", ".join(f"{name}={value}" for name, value in inputs.items())
        lines.append(
            f"{_when(row.get('at_ns')):21} {row.get('transfer_id', '')} {row.get('outcome', '')}"
            f"{' report' if row.get('report') else ''} {row.get('state', '')}"
            f" v{row.get('version', '')} [{', '.join(row.get('rules') or [])}] {shown}"
        )
    return "\n".join(lines)
