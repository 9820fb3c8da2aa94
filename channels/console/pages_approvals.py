# Chinese labels use Chinese (full-width) punctuation on purpose.
# ruff: noqa: RUF001
"""The console's approvals inbox and parameter pages: maker-checker in a browser.

The same service calls as the JSON admin routes (channels/http/admin.py): a parameter
edit is `bank.approvals.request` (never a direct change: the text in force moves only
when a second operator approves), a decision is `approve` / `reject`, the reads are
`list`, `get`, `current`, `versions`. Every rule (who may request or decide what, the
maker never decides their own, the text validated with every error and its line, a
stale base version, a duplicate pending request) is the service's; the pages only
check the route's permission before calling it (the kind is a path parameter or the
request's own, so `ConsoleRoute.permission` can only say `read:approvals`) and show
what the service refused on the page, with the refusal's HTTP status
(channels/http/problems.py), never a 500.

Pages (the DOM ids the browser tests use: docs/console.md):

- `/console/approvals`: table#pending (requests newest first, a.request to each),
  form#filter by state and kind (`?state=` one of the service's states or `all`,
  `?kind=`).
- `/console/approvals/{request_id}`: the request (#request-id, kind, maker, made at,
  state, reason), div#diff (a parameter change: the unified diff as a table whose rows
  are `add` / `del` / `ctx` / `hunk`) or dl#payload (an operation), form#approve and
  form#reject (each a textarea[name=reason]; the reject one required), #result once
  decided, #error for a refused decision.
- `/console/parameters`: table#parameters, each kind the approvals service registers
  with its version in force.
- `/console/parameters/{kind}`: pre#current, table#versions, form#edit
  (textarea[name=text], input[name=reason], input[name=base_version]) whose POST makes
  the request and redirects (303) to its page.
"""

from __future__ import annotations

import datetime
import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from channels.console import i18n
from channels.console.app import (
    ConsoleError,
    ConsoleRequest,
    ConsoleRoute,
    Html,
    Redirect,
    yuan,
)
from channels.http.problems import refusal_problem
from core.services.approvals import PENDING, STATES, Approvals
from core.services.operators import KINDS, READ_APPROVALS, permitted
from core.services.records import NS_PER_S
from core.services.refusals import Code, Refused

REQUEST_ID_PATTERN: Final = re.compile(r"A[0-9a-f]{12}")
BASE_VERSION_PATTERN: Final = re.compile(r"-?[0-9]{1,18}")
ALL: Final = "all"
LIST_LIMIT: Final = 200  # requests on the inbox page (the service keeps every one)
DIFF_CONTEXT_LINES: Final = 3

i18n.register(
    {
        "approvals.title": ("Approvals", "审批"),
        "approvals.inbox": ("Approvals inbox", "审批收件箱"),
        "approvals.filter": ("Filter", "筛选"),
        "approvals.state": ("State", "状态"),
        "approvals.kind": ("Kind", "类型"),
        "approvals.all": ("All", "全部"),
        "approvals.id": ("Request", "申请编号"),
        "approvals.object": ("Object", "对象"),
        "approvals.maker": ("Maker", "经办人"),
        "approvals.maker_role": ("Maker's role", "经办人角色"),
        "approvals.made_at": ("Made at", "提交时间"),
        "approvals.apply_at": ("Takes effect", "生效时间"),
        "approvals.apply_now": ("At the approval", "审批通过即生效"),
        "approvals.expires_at": ("Expires", "过期时间"),
        "approvals.reason": ("Reason", "理由"),
        "approvals.checker": ("Checker", "复核人"),
        "approvals.decided_at": ("Decided at", "审批时间"),
        "approvals.decision_reason": ("Checker's reason", "复核意见"),
        "approvals.applied_at": ("Applied at", "执行时间"),
        "approvals.versions": ("Version", "版本"),
        "approvals.none": ("No request matches.", "没有符合条件的申请。"),
        "approvals.showing": ("Newest first, at most", "按时间倒序，最多显示"),
        "approvals.change": ("The change", "变更内容"),
        "approvals.diff_empty": ("No line differs.", "没有差异。"),
        "approvals.payload": ("What is asked", "申请内容"),
        "approvals.approve": ("Approve", "批准"),
        "approvals.reject": ("Reject", "驳回"),
        "approvals.approve_reason": ("Reason (optional)", "意见（可选）"),
        "approvals.reject_reason": ("Reason (required)", "驳回理由（必填）"),
        "approvals.decide": ("Decision", "审批"),
        "approvals.own": (
            "You made this request: another operator must decide it.",
            "这是您提交的申请，须由其他操作员审批。",
        ),
        "approvals.not_checker": (
            "Your role does not approve this kind of request.",
            "您的角色无权审批此类申请。",
        ),
        "approvals.stale": (
            "The version in force changed since this request was made: approving it will"
            " fail as stale.",
            "申请提交后生效版本已变更：批准后将因版本过期而失败。",
        ),
        "approvals.result": ("Outcome", "结果"),
        "approvals.result_applied": ("Approved and applied.", "已批准并已生效。"),
        "approvals.result_approved": (
            "Approved; it takes effect at its time.",
            "已批准，将在生效时间执行。",
        ),
        "approvals.result_rejected": ("Rejected.", "已驳回。"),
        "approvals.result_expired": ("Expired undecided.", "已过期，未审批。"),
        "approvals.result_failed": ("Approved, but applying it failed.", "已批准，但执行失败。"),
        "approvals.result_detail": ("Result", "执行结果"),
        "approvals.refused": ("Refused", "操作被拒绝"),
        "approvals.back": ("Back to the inbox", "返回收件箱"),
        "approvals.pending_for_kind": ("A request is pending", "已有待审批的申请"),
        "approvals.state.pending": ("pending", "待审批"),
        "approvals.state.approved": ("approved", "已批准"),
        "approvals.state.applied": ("applied", "已生效"),
        "approvals.state.rejected": ("rejected", "已驳回"),
        "approvals.state.expired": ("expired", "已过期"),
        "approvals.state.failed": ("failed", "执行失败"),
        "approvals.kind.limits": ("Limits", "限额规则"),
        "approvals.kind.deposits": ("Deposit products and rates", "存款产品与利率"),
        "approvals.kind.risk": ("Risk rules", "风控规则"),
        "approvals.kind.lpr": ("Loan prime rate (LPR)", "贷款市场报价利率（LPR）"),
        "approvals.kind.channels": ("Channels and keys", "渠道与密钥"),
        "approvals.kind.loans": ("Loan products", "贷款产品"),
        "approvals.kind.reversal": ("Counter reversal", "柜面冲正"),
        "approvals.kind.unlock_password": ("Password unlock", "密码解锁"),
        "approvals.kind.release_review": ("Release a reviewed payment", "放行复核支付"),
        "approvals.kind.return_review": ("Return a reviewed payment", "退回复核支付"),
        "approvals.kind.credit_limit": ("Credit limit", "授信额度"),
        "parameters.title": ("Parameters", "参数"),
        "parameters.kind": ("Parameter", "参数"),
        "parameters.version": ("Version in force", "生效版本"),
        "parameters.digest": ("Digest (SHA-256)", "摘要（SHA-256）"),
        "parameters.request": ("Approved by request", "审批申请"),
        "parameters.shipped": ("shipped file", "初始文件"),
        "parameters.unavailable": ("unavailable", "不可用"),
        "parameters.current": ("In force", "当前生效内容"),
        "parameters.history": ("Version history", "版本历史"),
        "parameters.edit": ("Propose a change", "提交变更申请"),
        "parameters.edit_note": (
            "Submitting creates an approval request; nothing changes until a second"
            " operator approves it.",
            "提交后生成审批申请；须经另一名操作员批准后才会生效。",
        ),
        "parameters.text": ("New text", "新内容"),
        "parameters.reason": ("Reason (optional)", "理由（可选）"),
        "parameters.submit": ("Request approval", "提交审批"),
        "parameters.no_request": (
            "Your role may not propose changes of this parameter.",
            "您的角色无权提交此参数的变更。",
        ),
        "parameters.errors": ("Problems in the proposed text", "所提交内容的问题"),
        "parameters.line": ("line", "行"),
    }
)


@dataclass(frozen=True, slots=True)
class DiffRow:
    """One row of the diff table: `kind` is its CSS class (add, del, ctx, hunk)."""

    kind: str
    old_line: int | None
    new_line: int | None
    text: str


_HUNK = re.compile(r"@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def diff_rows(lines: Iterable[str]) -> list[DiffRow]:
    """The rows of a unified diff (`difflib.unified_diff` lines, without their ends):
    the file headers left out, each hunk header a `hunk` row, each line numbered in the
    old and/or new text."""
    rows: list[DiffRow] = []
    old = new = 0
    for line in lines:
        if line.startswith(("--- ", "+++ ")) and not rows:
            continue
        match = _HUNK.match(line)
        if match:
            old, new = int(match[1]), int(match[2])
            rows.append(DiffRow("hunk", None, None, line))
        elif line.startswith("+"):
            rows.append(DiffRow("add", None, new, line[1:]))
            new += 1
        elif line.startswith("-"):
            rows.append(DiffRow("del", old, None, line[1:]))
            old += 1
        elif line.startswith(" ") or line == "":
            rows.append(DiffRow("ctx", old, new, line[1:]))
            old += 1
            new += 1
    return rows


def text_diff(old_text: str, new_text: str) -> list[DiffRow]:
    """The unified diff of the text in force against the proposed one, as rows."""
    return diff_rows(
        difflib.unified_diff(
            old_text.splitlines(),
            new_text.splitlines(),
            lineterm="",
            n=DIFF_CONTEXT_LINES,
        )
    )


def _request_diff(approvals: Approvals, record: dict[str, Any]) -> list[DiffRow]:
    """The diff a checker judges: of the text in force against the requested text while
    the request was made against it; else (decided, or stale) the diff the service kept
    with the request (made the same way, against the version then in force)."""
    kind = record["kind"]
    if record["state"] == PENDING:
        try:
            current = approvals.current(kind)
        except Refused:
            current = None
        if current is not None and current["version"] == record["base_version"]:
            return text_diff(current["text"], str(record["payload"].get("text", "")))
    return diff_rows(str(record.get("diff") or "").splitlines())


def format_time(ns: int, request: ConsoleRequest) -> str:
    """A moment in the bank's time zone (the limit rules'), to the second; "" for 0."""
    if not ns:
        return ""
    zone = request.bank.core.rules.timezone
    moment = datetime.datetime.fromtimestamp(ns // NS_PER_S, zone)
    return moment.strftime("%Y-%m-%d %H:%M:%S %z")


def payload_items(payload: dict[str, Any]) -> list[tuple[str, str]]:
    """An operation's payload as (term, value) pairs for a definition list; amounts in fen
    also in yuan."""
    items = []
    for name in sorted(payload):
        value = payload[name]
        if isinstance(value, str):
            shown = value
        elif name.endswith("_minor") and type(value) is int:
            shown = f"{value} ({yuan(value)} CNY)"
        else:
            shown = orjson.dumps(value).decode()
        items.append((name, shown))
    return items


@dataclass(frozen=True, slots=True)
class Failure:
    """A refused action shown on its page: the HTTP status, the message, the problems
    (a parameter file's, each with its line)."""

    status: int
    title: str
    detail: str
    errors: list[dict[str, Any]]
    request_id: str = ""  # a duplicate: the request already pending


def failure_of(error: Refused) -> Failure:
    refusal = error.refusal
    problem = refusal_problem(refusal)
    errors: list[dict[str, Any]] = []
    if refusal.code == Code.PARAMETER_INVALID:
        errors = [
            {"line": int(item.get("line", 0)), "message": str(item.get("message", ""))}
            for item in refusal.extras.get("errors", ())
            if isinstance(item, dict)
        ]
    detail = refusal.detail
    if refusal.code == Code.INVALID_FIELD:
        detail = f"{refusal.detail} ({refusal.extras.get('pointer', '')})"
    return Failure(
        problem.status,
        problem.title,
        detail,
        errors,
        str(refusal.extras.get("request_id", "")),
    )


# --- helpers ----------------------------------------------------------------------------


def _approvals(request: ConsoleRequest) -> Approvals:
    return request.bank.approvals


def _record(request: ConsoleRequest) -> dict[str, Any]:
    request_id = request.params["request_id"]
    if not REQUEST_ID_PATTERN.fullmatch(request_id):
        raise ConsoleError(
            404, "No such approval request", "a request id is A and 12 lowercase hex digits"
        )
    try:
        return _approvals(request).get(request_id)
    except Refused:
        raise ConsoleError(404, "No such approval request", request_id) from None


def _parameter_kind(request: ConsoleRequest) -> str:
    kind = request.params["kind"]
    if kind not in _approvals(request).parameters:
        raise ConsoleError(
            404,
            "No such parameter",
            f"the parameters here: {', '.join(sorted(_approvals(request).parameters))}",
        )
    return kind


def _require(request: ConsoleRequest, permission: str) -> None:
    role = request.caller.role
    if not permitted(role, permission):
        raise ConsoleError(403, "Not permitted", f"the role {role} does not hold {permission}")


def _base(request: ConsoleRequest, **context: Any) -> dict[str, Any]:
    return {"csrf": request.csrf, **context}


# --- the inbox ----------------------------------------------------------------------------


async def approvals_list(request: ConsoleRequest) -> Html:
    """The requests, newest first, by state (pending unless asked) and kind."""
    approvals = _approvals(request)
    state = request.query.get("state", PENDING) or PENDING
    kind = request.query.get("kind", "")
    if state != ALL and state not in STATES:
        raise ConsoleError(400, "No such state", f"expected one of {ALL}, {', '.join(STATES)}")
    if kind and kind not in KINDS:
        raise ConsoleError(400, "No such kind", f"expected one of {', '.join(KINDS)}")
    records = approvals.list(
        state=None if state == ALL else state, kind=kind or None, limit=LIST_LIMIT
    )
    rows = [
        {
            "id": record["id"],
            "kind": record["kind"],
            "object": record["object"],
            "maker": record["maker"],
            "made_at": format_time(record["made_ns"], request),
            "state": record["state"],
            "checker": record["checker"],
        }
        for record in records
    ]
    return Html(
        "approvals.html",
        _base(
            request,
            rows=rows,
            state=state,
            kind=kind,
            states=[ALL, *STATES],
            kinds=sorted([*approvals.parameters, *approvals.operations]),
            limit=LIST_LIMIT,
        ),
    )


def _detail(
    request: ConsoleRequest, record: dict[str, Any], failure: Failure | None = None
) -> Html:
    """The page of one request (its decision forms when the operator may decide it)."""
    approvals = _approvals(request)
    kind = record["kind"]
    is_parameter = kind in approvals.parameters
    pending = record["state"] == PENDING
    checker = permitted(request.caller.role, f"approve:{kind}")
    own = record["maker"] == request.caller.name
    stale = False
    if is_parameter and pending:
        try:
            stale = approvals.current(kind)["version"] != record["base_version"]
        except Refused:
            stale = False
    result = record.get("result")
    context = _base(
        request,
        record=record,
        is_parameter=is_parameter,
        diff=_request_diff(approvals, record) if is_parameter else [],
        payload=[] if is_parameter else payload_items(record["payload"]),
        made_at=format_time(record["made_ns"], request),
        apply_at=format_time(record["apply_at_ns"], request),
        expires_at=format_time(record["expires_ns"], request),
        decided_at=format_time(record["decided_ns"], request),
        applied_at=format_time(record["applied_ns"], request),
        pending=pending,
        may_decide=pending and checker and not own,
        own=pending and own,
        not_checker=pending and not checker,
        stale=stale,
        result=orjson.dumps(result, option=orjson.OPT_SORT_KEYS).decode() if result else "",
        failure=failure,
    )
    return Html("approvals_detail.html", context, status=failure.status if failure else 200)


async def approvals_view(request: ConsoleRequest) -> Html:
    return _detail(request, _record(request))


async def approvals_approve(request: ConsoleRequest) -> Html | Redirect:
    """Approve (the checker); applied at once when due. A refusal is shown on the page."""
    record = _record(request)
    _require(request, f"approve:{record['kind']}")
    try:
        await _approvals(request).approve(
            request.caller, record["id"], request.form.get("reason", "")
        )
    except Refused as error:
        return _detail(request, _approvals(request).get(record["id"]), failure_of(error))
    return Redirect(f"/console/approvals/{record['id']}")


async def approvals_reject(request: ConsoleRequest) -> Html | Redirect:
    """Reject (the checker, with a reason). A refusal is shown on the page."""
    record = _record(request)
    _require(request, f"approve:{record['kind']}")
    try:
        await _approvals(request).reject(
            request.caller, record["id"], request.form.get("reason", "")
        )
    except Refused as error:
        return _detail(request, _approvals(request).get(record["id"]), failure_of(error))
    return Redirect(f"/console/approvals/{record['id']}")


# --- parameters ------------------------------------------------------------------------


async def parameters_list(request: ConsoleRequest) -> Html:
    """Each parameter kind registered, with its version in force and a pending request."""
    approvals = _approvals(request)
    rows = []
    for kind in sorted(approvals.parameters):
        try:
            current: dict[str, Any] | None = approvals.current(kind)
        except Refused:
            current = None
        pending = approvals.list(state=PENDING, kind=kind, limit=1)
        rows.append(
            {
                "kind": kind,
                "version": current["version"] if current else None,
                "digest": current["digest"] if current else "",
                "request_id": current["request_id"] if current else "",
                "pending_id": pending[0]["id"] if pending else "",
            }
        )
    return Html("parameters.html", _base(request, rows=rows))


def _parameter_page(
    request: ConsoleRequest,
    kind: str,
    *,
    text: str | None = None,
    reason: str = "",
    failure: Failure | None = None,
) -> Html:
    approvals = _approvals(request)
    try:
        current = approvals.current(kind)
    except Refused as error:
        raise ConsoleError(503, "Parameter unavailable", error.refusal.detail) from None
    versions = [
        {
            **version,
            "applied_at": format_time(version["applied_ns"], request),
        }
        for version in reversed(approvals.versions(kind))
    ]
    pending = approvals.list(state=PENDING, kind=kind, limit=1)
    return Html(
        "parameters_detail.html",
        _base(
            request,
            kind=kind,
            current=current,
            versions=versions,
            pending_id=pending[0]["id"] if pending else "",
            may_request=permitted(request.caller.role, f"request:{kind}"),
            text=current["text"] if text is None else text,
            reason=reason,
            failure=failure,
        ),
        status=failure.status if failure else 200,
    )


async def parameters_view(request: ConsoleRequest) -> Html:
    return _parameter_page(request, _parameter_kind(request))


async def parameters_edit(request: ConsoleRequest) -> Html | Redirect:
    """Propose a new text: an approval request (never a direct change), then its page.
    A refusal (invalid text with every problem, stale, duplicate) re-renders the form
    with the text as typed."""
    kind = _parameter_kind(request)
    _require(request, f"request:{kind}")
    # A browser sends a textarea's line ends as CRLF: the files are LF.
    text = request.form.get("text", "").replace("\r\n", "\n")
    reason = request.form.get("reason", "")
    base = request.form.get("base_version", "")
    if not BASE_VERSION_PATTERN.fullmatch(base):
        raise ConsoleError(400, "Bad form", "base_version: the version edited (an integer)")
    try:
        record = await _approvals(request).request(
            request.caller, kind, "", {"text": text, "base_version": int(base)}, reason=reason
        )
    except Refused as error:
        return _parameter_page(request, kind, text=text, reason=reason, failure=failure_of(error))
    return Redirect(f"/console/approvals/{record['id']}")


ROUTES: Final[list[ConsoleRoute]] = [
    ConsoleRoute("GET", "/console/approvals", approvals_list, READ_APPROVALS, "approvals"),
    ConsoleRoute(
        "GET", "/console/approvals/{request_id}", approvals_view, READ_APPROVALS, "approval"
    ),
    ConsoleRoute(
        "POST",
        "/console/approvals/{request_id}/approve",
        approvals_approve,
        READ_APPROVALS,
        "approval_approve",
    ),
    ConsoleRoute(
        "POST",
        "/console/approvals/{request_id}/reject",
        approvals_reject,
        READ_APPROVALS,
        "approval_reject",
    ),
    ConsoleRoute("GET", "/console/parameters", parameters_list, READ_APPROVALS, "parameters"),
    ConsoleRoute("GET", "/console/parameters/{kind}", parameters_view, READ_APPROVALS, "parameter"),
    ConsoleRoute(
        "POST", "/console/parameters/{kind}", parameters_edit, READ_APPROVALS, "parameter_edit"
    ),
]
