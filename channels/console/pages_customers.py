# Chinese labels use Chinese (full-width) punctuation on purpose.
# ruff: noqa: RUF001
"""Search across channels, and the customer, account and transfer pages.

The reads go through the same services as every adapter's, as the bank's own
back office (`CONSOLE_READER`: an internal caller, whose read scope is the whole
bank); the lookups by mobile, name and Idempotency-Key are core/services/search.py's
index hits. The actions an operator may take from these pages:

- request a password unlock (`bank.approvals.request(caller, "unlock_password")`: a
  maker-checker request a supervisor approves in the approvals inbox, never an
  unlock done here);
- confirm a pending customer in person (`bank.verification.confirm_in_person`) as the
  counter does, naming the operator as the teller who saw the customer and the ID card.

Closing an account needs the holder's consent (their transaction password or a token:
core/services/accounts.py `close`), which an operator cannot give: the account page says
so instead of offering it.

Pages (the DOM ids the browser tests use): form#search (q, kind, channel), table#results
(a.result per row); the customer's table#accounts, #kyc-status, table#steps,
table#calls; the account's #balance, table#buckets, table#history with a#next-page,
form#unlock, form#confirm; the transfer's #answer, #risk, table#postings.
"""

from __future__ import annotations

from typing import Any, Final

from channels.console import i18n
from channels.console.app import ConsoleError, ConsoleRequest, ConsoleRoute, Html, Redirect
from channels.http.problems import REFUSALS, transfer_problem
from core.services import identity, search
from core.services.accounts import FIXED_DEPOSIT_CLASS, LOAN_CLASS
from core.services.commands import Caller, ConfirmInPerson
from core.services.customers import CLASS_NAMES
from core.services.operators import CONFIRM_IN_PERSON, READ_CUSTOMERS
from core.services.records import transfer_read
from core.services.refusals import Code, Refused
from core.services.results import FixedDepositRead, TransferRead
from ledger.types import CreateTransferResult

# The console reads as the bank's back office: every customer, every account.
CONSOLE_READER: Final = Caller("console", "internal", 0)
HISTORY_PAGE_SIZE: Final = 20
FIXED_DEPOSITS_SHOWN_MAX: Final = 20
KINDS: Final = ("customer", "account", "transfer")
QUERY_LENGTH_MAX: Final = 255
UNLOCK_KIND: Final = "unlock_password"
CLOSE_KIND: Final = "close_account"

i18n.register(
    {
        "search_title": ("Search across channels", "跨渠道查询"),
        "search_q": ("Search for", "查询内容"),
        "search_kind": ("What", "类型"),
        "search_channel": ("Channel (for an Idempotency-Key)", "渠道（按幂等键查询时）"),
        "search_any_channel": ("- by transfer id -", "- 按交易编号 -"),
        "search_button": ("Search", "查询"),
        "search_hint": (
            "A customer by customer id, name, resident id or mobile; an account by id; a "
            "transfer by id, or by Idempotency-Key with its channel.",
            "客户：客户编号、姓名、身份证号或手机号；账户：账号；交易：交易编号，或幂等键加渠道。",
        ),
        "search_none": ("Nothing found.", "未找到结果。"),
        "search_bad": ("Cannot search for that: {why}", "无法查询：{why}"),
        "kind_customer": ("Customer", "客户"),
        "kind_account": ("Account", "账户"),
        "kind_transfer": ("Transfer", "交易"),
        "matched_by": ("Matched by", "匹配方式"),
        "by_customer_id": ("customer id", "客户编号"),
        "by_resident_id": ("resident id", "身份证号"),
        "by_mobile": ("mobile", "手机号"),
        "by_name": ("name", "姓名"),
        "by_account_id": ("account id", "账号"),
        "by_transfer_id": ("transfer id", "交易编号"),
        "by_key": ("Idempotency-Key", "幂等键"),
        "customer_title": ("Customer", "客户"),
        "customer_id": ("Customer id", "客户编号"),
        "name": ("Name", "姓名"),
        "resident_id": ("Resident id", "身份证号"),
        "mobile": ("Mobile", "手机号"),
        "registered": ("Registered", "注册时间"),
        "kyc_status": ("Real-name verification", "实名认证"),
        "kyc_pending": ("pending", "待完成"),
        "kyc_verified": ("verified", "已认证"),
        "kyc_rejected": ("rejected", "已拒绝"),
        "steps": ("Steps", "步骤"),
        "step": ("Step", "步骤"),
        "state": ("State", "状态"),
        "attempts": ("Attempts", "尝试次数"),
        "reasons": ("Reasons", "原因"),
        "updated": ("Updated", "更新时间"),
        "by": ("By", "操作方"),
        "provider_calls": ("Provider calls", "第三方调用"),
        "provider": ("Provider", "服务方"),
        "outcome": ("Outcome", "结果"),
        "elapsed_ms": ("ms", "毫秒"),
        "at": ("At", "时间"),
        "request_id": ("Request id", "请求编号"),
        "accounts": ("Accounts", "账户"),
        "account_id": ("Account", "账号"),
        "class": ("Class", "类别"),
        "closed": ("Closed", "已销户"),
        "class_class_i": ("Class I", "I 类户"),
        "class_class_ii": ("Class II", "II 类户"),
        "class_class_iii": ("Class III", "III 类户"),
        "class_fixed_deposit": ("Fixed deposit", "定期存款"),
        "class_loan": ("Loan", "贷款"),
        "class_bank": ("Bank account", "银行内部账户"),
        "confirm_in_person": ("Confirm in person (face to face)", "柜面面签确认"),
        "confirm_in_person_help": (
            "I saw this customer and their ID card at the counter.",
            "本人已在柜面核验该客户及其身份证件。",
        ),
        "account_title": ("Account {account_id}", "账户 {account_id}"),
        "holder": ("Holder", "户主"),
        "bound_card": ("Bound card", "绑定卡"),
        "flags": ("Flags", "标志"),
        "flag_closed": ("closed", "已销户"),
        "flag_frozen": ("frozen", "已冻结"),
        "flag_password_locked": ("password locked", "密码已锁定"),
        "flag_face_to_face": ("face-to-face verified", "已面签"),
        "flag_non_bound_inflow": ("inflow from any account", "可接收非绑定账户转入"),
        "flag_none": ("none", "无"),
        "balance": ("Balance (CNY)", "余额（元）"),
        "available": ("Available", "可用余额"),
        "pending_debits": ("Pending debits", "在途支出"),
        "pending_credits": ("Pending credits", "在途收入"),
        "business_day": ("Business day", "营业日"),
        "buckets": ("PBoC limits used", "人行限额使用情况"),
        "bucket": ("Limit", "限额"),
        "used": ("Used", "已用"),
        "limit": ("Limit", "上限"),
        "remaining": ("Remaining", "剩余"),
        "inflow_daily": ("inflow today", "当日转入"),
        "inflow_yearly": ("inflow this year", "年度转入"),
        "outflow_daily": ("outflow today", "当日转出"),
        "outflow_yearly": ("outflow this year", "年度转出"),
        "no_buckets": (
            "No PBoC caps on this account (Class I or a product account).",
            "该账户无人行额度限制（I 类户或产品账户）。",
        ),
        "balance_cap": ("Balance cap", "余额上限"),
        "products": ("Products held", "持有产品"),
        "fixed_deposits": ("Fixed deposits", "定期存款"),
        "loans": ("Loans", "贷款"),
        "principal": ("Principal", "本金"),
        "rate": ("Rate", "利率"),
        "term": ("Term", "期限"),
        "maturity": ("Maturity", "到期日"),
        "outstanding": ("Outstanding", "未还本金"),
        "owed": ("Owed", "应还"),
        "product": ("Product", "产品"),
        "status": ("Status", "状态"),
        "history": ("History", "交易记录"),
        "next_page": ("Older →", "更早 →"),
        "first_page": ("← Newest", "← 最新"),
        "transfer": ("Transfer", "交易"),
        "kind": ("Kind", "种类"),
        "amount": ("Amount", "金额"),
        "debit": ("Debit", "借方"),
        "credit": ("Credit", "贷方"),
        "channel": ("Channel", "渠道"),
        "code": ("Code", "类型"),
        "time": ("Time", "时间"),
        "no_history": ("No transfers.", "暂无交易。"),
        "actions": ("Actions", "操作"),
        "unlock": ("Request a password unlock", "申请解锁交易密码"),
        "unlock_help": (
            "Creates a request a supervisor approves in the approvals inbox.",
            "将生成一条审批请求，由主管在审批中心批准。",
        ),
        "unlock_requested": ("Unlock requested: request {id}", "已提交解锁申请：{id}"),
        "close": ("Request closing the account", "申请销户"),
        "close_help": (
            "The bank closes an account that holds nothing (no balance, no hold) once a"
            " supervisor approves the request; the holder closes their own at a channel.",
            "账户无余额、无冻结时，经主管批准后由银行销户；户主本人可在渠道自行销户。",
        ),
        "close_requested": ("Closing requested: request {id}", "已提交销户申请：{id}"),
        "request_made": (
            "Request {id} made: it waits for a checker in the approvals inbox.",
            "已提交申请 {id}：等待审批中心复核。",
        ),
        "no_actions": ("No action of your role applies here.", "您的角色在此无可用操作。"),
        "transfer_title": ("Transfer {transfer_id}", "交易 {transfer_id}"),
        "answer": ("Answer", "应答"),
        "result": ("Result", "结果"),
        "http_answer": ("HTTP answer", "HTTP 应答"),
        "risk_decision": ("Risk decision", "风控决策"),
        "no_risk": ("No risk rule fired on this transfer.", "该交易未触发风控规则。"),
        "rules": ("Rules", "规则"),
        "postings": ("Postings", "记账分录"),
        "posted": ("Posted", "已入账"),
        "reversed": ("Reversed", "已冲正"),
        "hold_of": ("Settles the hold", "结算的预授权"),
        "the_transfer": ("this transfer", "本交易"),
        "the_hold": ("its hold", "其预授权"),
        "not_found_customer": ("No such customer", "客户不存在"),
        "not_found_account": ("No such account", "账户不存在"),
        "not_found_transfer": ("No such transfer", "交易不存在"),
        "bad_id": ("Not an id", "编号格式错误"),
    }
)


# --- search -----------------------------------------------------------------------------


async def search_page(request: ConsoleRequest) -> Html:
    query = request.query
    text = query.get("q", "").strip()
    kind = query.get("kind", "customer") or "customer"
    channel = query.get("channel", "").strip()
    channels = sorted(request.app.registry.channels)
    context: dict[str, Any] = {
        "q": text,
        "kind": kind,
        "channel": channel,
        "kinds": KINDS,
        "channels": channels,
        "results": None,
        "error": "",
    }
    unknown = set(query) - {"q", "kind", "channel"}
    if unknown:
        raise ConsoleError(400, "err_400", f"unknown query parameter {sorted(unknown)[0]!r}")
    if kind not in KINDS:
        return Html(
            "search.html",
            {**context, "kind": "customer", "error": f"kind is one of {', '.join(KINDS)}"},
            400,
        )
    if len(text) > QUERY_LENGTH_MAX:
        return Html("search.html", {**context, "error": "at most 255 characters"}, 400)
    if not text:
        return Html("search.html", context)
    try:
        if kind == "customer":
            results = _customer_results(request, text)
        elif kind == "account":
            results = await _account_results(request, text)
        else:
            results = await _transfer_results(request, text, channel)
    except ValueError as error:
        return Html("search.html", {**context, "error": str(error)}, 400)
    return Html("search.html", {**context, "results": results})


def _customer_results(request: ConsoleRequest, text: str) -> list[dict[str, str]]:
    state = request.bank.core.customer_state()
    return [
        {
            "href": f"/console/customers/{match.customer.customer_id}",
            "id": match.customer.customer_id,
            "label": match.customer.name,
            "detail": identity.mask_mobile(match.customer.mobile),
            "matched_by": "by_" + match.matched_by,
        }
        for match in search.find_customers(state, text)
    ]


async def _account_results(request: ConsoleRequest, text: str) -> list[dict[str, str]]:
    account_id = search.parse_account_id(text)
    if account_id is None:
        raise ValueError("an account id is a decimal number")
    raw = await request.bank.core.read(lambda ledger: ledger.lookup_account(account_id))
    if raw is None:
        return []
    meta = request.bank.core.customer_state().accounts.get(account_id)
    return [
        {
            "href": f"/console/accounts/{account_id}",
            "id": str(account_id),
            "label": "class_" + (CLASS_NAMES.get(meta.account_class, "bank") if meta else "bank"),
            "detail": meta.customer_id if meta else "",
            "matched_by": "by_account_id",
        }
    ]


async def _transfer_results(
    request: ConsoleRequest, text: str, channel: str
) -> list[dict[str, str]]:
    if not channel:
        transfer_id = search.parse_transfer_id(text)
        if transfer_id is None:
            raise ValueError(
                "a transfer id is 32 hex digits; for an Idempotency-Key name its channel"
            )
        found = await _lookup_transfers(request, [transfer_id], stop_at_missing=False)
        matched_by = "by_transfer_id"
        if not found:
            risk = _risk_decision(request, transfer_id)
            if risk is not None:
                return [_risk_row(transfer_id, risk, matched_by)]
    else:
        entry = request.app.registry.channels.get(channel)
        if entry is None:
            raise ValueError(f"no channel {channel!r}")
        ids = search.transfer_ids_of_key(request.bank.core.ids, entry.ledger_id, text)
        found = await _lookup_transfers(request, ids, stop_at_missing=True)
        matched_by = "by_key"
        if not found:  # refused by the risk stage before the ledger: its decision
            risk = _risk_decision(request, ids[0])
            if risk is not None:
                return [_risk_row(ids[0], risk, matched_by)]
    return [
        {
            "href": f"/console/transfers/{transfer.transfer_id}",
            "id": transfer.transfer_id,
            "label": f"{transfer.kind} · {transfer.state}",
            "detail": f"{transfer.debit_account_id} → {transfer.credit_account_id}",
            "matched_by": matched_by,
        }
        for transfer in found
    ]


def _risk_row(transfer_id: int, risk: dict[str, Any], matched_by: str) -> dict[str, str]:
    return {
        "href": f"/console/transfers/{transfer_id:032x}",
        "id": f"{transfer_id:032x}",
        "label": f"risk · {risk.get('outcome', '')} · {risk.get('state', '')}",
        "detail": f"{risk.get('debit', '')} → {risk.get('credit', '')}",
        "matched_by": matched_by,
    }


async def _lookup_transfers(
    request: ConsoleRequest, ids: list[int], *, stop_at_missing: bool
) -> list[TransferRead]:
    """The transfers of `ids` in one engine read (a batch's items: up to the first gap)."""

    def read(ledger: Any) -> list[bytes]:
        found = []
        for transfer_id in ids:
            raw = ledger.lookup_transfer(transfer_id)
            if raw is None:
                if stop_at_missing:
                    break
                continue
            found.append(raw)
        return found

    return [transfer_read(raw) for raw in await request.bank.core.read(read)]


# --- customer -----------------------------------------------------------------------------


async def customer_page(request: ConsoleRequest) -> Html:
    customer_id = request.params["customer_id"]
    if not search.CUSTOMER_ID_PATTERN.fullmatch(customer_id):
        raise ConsoleError(404, "not_found_customer", customer_id)
    state = request.bank.core.customer_state()
    customer = state.customers.get(customer_id)
    if customer is None:
        raise ConsoleError(404, "not_found_customer", customer_id)
    verification = request.bank.verification.view(customer)
    accounts = [
        {
            "account_id": str(account_id),
            "class": CLASS_NAMES.get(state.accounts[account_id].account_class, "bank"),
            "closed": state.accounts[account_id].closed,
        }
        for account_id in customer.accounts
        if account_id in state.accounts
    ]
    return Html(
        "customer.html",
        {
            "customer": customer,
            "resident_id_masked": identity.mask_resident_id(customer.id_number),
            "mobile_masked": identity.mask_mobile(customer.mobile),
            "verification": verification,
            "accounts": accounts,
            "may_confirm": verification.status == "pending"
            and request.operator.permitted(CONFIRM_IN_PERSON),
        },
    )


async def confirm_in_person(request: ConsoleRequest) -> Redirect:
    """The counter's face-to-face confirmation, the operator named as the teller."""
    customer_id = request.params["customer_id"]
    if customer_id not in request.bank.core.customer_state().customers:
        raise ConsoleError(404, "not_found_customer", customer_id)
    role = request.operator.role if request.operator.role == "supervisor" else "teller"
    caller = Caller("console", "counter", _counter_ledger_id(request), request.operator.name, role)
    await request.bank.verification.confirm_in_person(ConfirmInPerson(caller, customer_id))
    return Redirect(f"/console/customers/{customer_id}")


def _counter_ledger_id(request: ConsoleRequest) -> int:
    """The ledger id of the bank's counter channel (its verification policy applies)."""
    for entry in sorted(request.app.registry.channels.values(), key=lambda e: e.ledger_id):
        if entry.kind == "counter":
            return int(entry.ledger_id)
    return 0


# --- account --------------------------------------------------------------------------------


async def account_page(request: ConsoleRequest) -> Html:
    account_id = search.parse_account_id(request.params["account_id"])
    if account_id is None:
        raise ConsoleError(404, "not_found_account", request.params["account_id"])
    before = _cursor(request.query.get("before", ""))
    bank = request.bank
    try:
        account = await bank.reads.account(CONSOLE_READER, account_id)
    except Refused as error:
        if error.refusal.code.name in ("ACCOUNT_NOT_FOUND", "CUSTOMER_ACCOUNT_NOT_FOUND"):
            raise ConsoleError(404, "not_found_account", str(account_id)) from None
        raise
    page = await bank.reads.history(CONSOLE_READER, account_id, HISTORY_PAGE_SIZE, before)
    state = bank.core.customer_state()
    meta = state.accounts.get(account_id)
    customer = state.customers.get(meta.customer_id) if meta is not None else None
    _, failures = state.failures.get(account_id, (0, 0))
    locked = failures >= bank.core.settings.password_failures_max
    flags = []
    if account.status == "closed" or (meta is not None and meta.closed):
        flags.append("flag_closed")
    if account.status == "frozen":
        flags.append("flag_frozen")
    if locked:
        flags.append("flag_password_locked")
    if account.face_to_face_verified:
        flags.append("flag_face_to_face")
    if account.non_bound_inflow_enabled:
        flags.append("flag_non_bound_inflow")
    has_password = account_id in state.passwords
    context = {
        "account": account,
        "meta": meta,
        "class": CLASS_NAMES.get(meta.account_class, "bank") if meta is not None else "bank",
        "customer": customer,
        "flags": flags,
        "buckets": _buckets(account.quota),
        "history": page.items,
        "next_cursor": page.next_cursor,
        "first_page": before < 0,
        "products": await _products(request, customer) if customer is not None else None,
        "may_unlock": has_password and request.operator.permitted(f"request:{UNLOCK_KIND}"),
        "locked": locked,
        "pending_unlock": _pending_request(request, UNLOCK_KIND, account_id),
        "may_close": meta is not None
        and not meta.closed
        and request.operator.permitted(f"request:{CLOSE_KIND}"),
        "pending_close": _pending_request(request, CLOSE_KIND, account_id),
        "may_confirm": customer is not None
        and customer.kyc.get("status") == "pending"
        and request.operator.permitted(CONFIRM_IN_PERSON),
        "requested": request.query.get("requested", ""),
    }
    return Html("account.html", context)


def _cursor(text: str) -> int:
    if not text:
        return -1
    if not text.isdigit() or len(text) > 20:
        raise ConsoleError(400, "err_400", "before is a history cursor (a number)")
    return int(text)


def _buckets(quota: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The PBoC buckets as rows: used today / this year against each limit."""
    if not quota:
        return []
    rows = []
    for direction in ("inflow", "outflow"):
        for period in ("daily", "yearly"):
            bucket = quota[direction][period]
            rows.append(
                {
                    "name": f"{direction}_{period}",
                    "used_minor": bucket["used_minor"],
                    "limit_minor": bucket["limit_minor"],
                    "remaining_minor": bucket["remaining_minor"],
                }
            )
    return rows


async def _products(request: ConsoleRequest, customer: Any) -> dict[str, Any]:
    """The customer's fixed deposits and loans (each read through its service)."""
    bank = request.bank
    state = bank.core.customer_state()
    deposits: list[FixedDepositRead] = []
    for account_id in customer.accounts:
        meta = state.accounts.get(account_id)
        if meta is None or meta.account_class != FIXED_DEPOSIT_CLASS or meta.closed:
            continue
        if len(deposits) >= FIXED_DEPOSITS_SHOWN_MAX:
            break
        try:
            deposits.append(await bank.deposits.deposit(CONSOLE_READER, account_id))
        except Refused:  # closed meanwhile: not held any more
            continue
    loans = []
    if any(
        state.accounts[a].account_class == LOAN_CLASS
        for a in customer.accounts
        if a in state.accounts
    ):
        loans = (await bank.loan_accounts.loans_of(CONSOLE_READER, customer.customer_id)).loans
    return {"deposits": deposits, "loans": loans}


def _pending_request(request: ConsoleRequest, kind: str, account_id: int) -> str:
    """The id of a pending (or approved, not yet applied) request of `kind` on this
    account, if any."""
    for state in ("pending", "approved"):
        for record in request.bank.approvals.list(state=state, kind=kind, limit=1000):
            if record["object"] == str(account_id):
                return str(record["id"])
    return ""


async def _request_on_account(request: ConsoleRequest, kind: str) -> Redirect:
    """A maker-checker request of `kind` on the account (the approvals service checks
    it at once: a refusal is shown with its status)."""
    account_id = search.parse_account_id(request.params["account_id"])
    if account_id is None:
        raise ConsoleError(404, "not_found_account", request.params["account_id"])
    reason = request.form.get("reason", "").strip()
    record = await request.bank.approvals.request(
        request.caller,
        kind,
        str(account_id),
        {"account_id": str(account_id)},
        reason=reason,
    )
    return Redirect(f"/console/accounts/{account_id}?requested={record['id']}")


async def request_unlock(request: ConsoleRequest) -> Redirect:
    """A maker-checker request to lift the account's password lock."""
    return await _request_on_account(request, UNLOCK_KIND)


async def request_close(request: ConsoleRequest) -> Redirect:
    """A maker-checker request that the bank close the account (it must hold nothing)."""
    return await _request_on_account(request, CLOSE_KIND)


# --- transfer -------------------------------------------------------------------------------


async def transfer_page(request: ConsoleRequest) -> Html:
    """What happened to a request: its answer, its risk decision, its postings. A request
    the risk stage refused never reached the ledger: its decision alone tells."""
    transfer_id = search.parse_transfer_id(request.params["transfer_id"])
    if transfer_id is None:
        raise ConsoleError(404, "not_found_transfer", request.params["transfer_id"])
    found = await _lookup_transfers(request, [transfer_id], stop_at_missing=False)
    risk = _risk_decision(request, transfer_id)
    if not found and risk is None:
        raise ConsoleError(404, "not_found_transfer", f"{transfer_id:032x}")
    transfer = found[0] if found else None
    postings: list[dict[str, Any]] = []
    if transfer is not None:
        postings.append({"which": "the_transfer", "transfer": transfer})
        if transfer.pending_id is not None:
            hold_id = int(transfer.pending_id, 16)
            held = await _lookup_transfers(request, [hold_id], stop_at_missing=False)
            if held:
                postings.append({"which": "the_hold", "transfer": held[0]})
    channel_id = transfer.channel_id if transfer is not None else -1
    channel = request.app.registry.by_ledger_id.get(channel_id)
    return Html(
        "transfer.html",
        {
            "transfer_id": f"{transfer_id:032x}",
            "transfer": transfer,
            "answer": _answer(transfer, risk),
            "risk": risk,
            "channel": channel.name if channel is not None else (risk or {}).get("channel", ""),
            "postings": postings,
        },
    )


def _risk_decision(request: ConsoleRequest, transfer_id: int) -> dict[str, Any] | None:
    try:
        return request.bank.risk.decision(transfer_id)
    except Refused:
        return None


def _answer(transfer: TransferRead | None, risk: dict[str, Any] | None) -> dict[str, Any]:
    """The HTTP answer the request got (the status and problem type an adapter sends)."""
    if transfer is None:
        assert risk is not None
        code = Code.RISK_CHALLENGE if risk.get("outcome") == "challenge" else Code.RISK_BLOCKED
        status, slug, _ = REFUSALS[code]
        return {"status": status, "slug": slug, "title": risk.get("outcome", "")}
    result = transfer.result["code"]
    if result not in (CreateTransferResult.OK, CreateTransferResult.EXISTS):
        problem = transfer_problem(result)
        return {"status": problem.status, "slug": problem.slug, "title": problem.title}
    held = risk is not None and risk.get("state") not in (None, "posted")
    return {"status": 202 if held else 201, "slug": "", "title": transfer.state}


ROUTES: list[ConsoleRoute] = [
    ConsoleRoute("GET", "/console/search", search_page, READ_CUSTOMERS, "search"),
    ConsoleRoute(
        "GET", "/console/customers/{customer_id}", customer_page, READ_CUSTOMERS, "customer_view"
    ),
    ConsoleRoute(
        "POST",
        "/console/customers/{customer_id}/confirm",
        confirm_in_person,
        CONFIRM_IN_PERSON,
        "customer_confirm_in_person",
    ),
    ConsoleRoute(
        "GET", "/console/accounts/{account_id}", account_page, READ_CUSTOMERS, "account_view"
    ),
    ConsoleRoute(
        "POST",
        "/console/accounts/{account_id}/unlock",
        request_unlock,
        f"request:{UNLOCK_KIND}",
        "account_unlock_request",
    ),
    ConsoleRoute(
        "POST",
        "/console/accounts/{account_id}/close",
        request_close,
        f"request:{CLOSE_KIND}",
        "account_close_request",
    ),
    ConsoleRoute(
        "GET", "/console/transfers/{transfer_id}", transfer_page, READ_CUSTOMERS, "transfer_view"
    ),
]
