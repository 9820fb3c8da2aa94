# Chinese labels use Chinese (full-width) punctuation on purpose.
# ruff: noqa: RUF001
"""The console's labels in English and Chinese.

Every page module registers its labels once, at import:
`i18n.register({"key": ("English", "中文"), ...})`; templates write `{{ t("key") }}`
(`t("key", n=3)` fills `{n}` placeholders). A key registered twice with other text is
a programming error (an assertion at import); a key never registered renders as the
key itself, so a missing label shows on the page instead of crashing it.

The language: `?lang=zh|en` on any page sets the `tally_console_lang` cookie; without
one, the browser's Accept-Language (zh, zh-CN, zh-TW... -> zh), else English.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

LANGS: Final = ("en", "zh")
DEFAULT_LANG: Final = "en"

LABELS: dict[str, tuple[str, str]] = {}


def register(labels: Mapping[str, tuple[str, str]]) -> None:
    """Add a page module's labels (key -> (English, Chinese))."""
    for key, pair in labels.items():
        assert isinstance(pair, tuple) and len(pair) == 2, (key, pair)
        known = LABELS.get(key)
        assert known is None or known == pair, f"label {key!r} registered twice: {known} {pair}"
        LABELS[key] = pair


def label(key: str, lang: str, **values: Any) -> str:
    pair = LABELS.get(key)
    text = key if pair is None else pair[1] if lang == "zh" else pair[0]
    return text.format(**values) if values else text


def translator(lang: str) -> Callable[..., str]:
    """The `t` of a template in `lang`."""

    def t(key: str, **values: Any) -> str:
        return label(key, lang, **values)

    return t


def choose(query_lang: str | None, cookie_lang: str | None, accept_language: str) -> str:
    """The language of a request (see the module docstring)."""
    if query_lang in LANGS:
        return query_lang
    if cookie_lang in LANGS:
        return cookie_lang
    first = accept_language.split(",", 1)[0].strip().lower()
    return "zh" if first.startswith("zh") else DEFAULT_LANG


# The labels the framework and A's pages share.
register(
    {
        "app_title": ("Tally operations console", "Tally 运营控制台"),
        "nav_home": ("Home", "首页"),
        "nav_search": ("Search", "查询"),
        "nav_approvals": ("Approvals", "审批"),
        "nav_parameters": ("Parameters", "参数"),
        "nav_monitoring": ("Monitoring", "监控"),
        "nav_reports": ("Reports", "报表"),
        "logout": ("Log out", "退出"),
        "login": ("Log in", "登录"),
        "login_title": ("Operator login", "操作员登录"),
        "operator": ("Operator", "操作员"),
        "password": ("Password", "密码"),
        "role": ("Role", "角色"),
        "login_failed": ("Wrong operator or password.", "操作员或密码错误。"),
        "login_throttled": (
            "Too many failed logins for this operator: try again in {minutes} min.",
            "该操作员登录失败次数过多，请 {minutes} 分钟后再试。",
        ),
        "login_expired": (
            "The login form expired: please try again.",
            "登录表单已过期，请重试。",
        ),
        "logged_out": ("You are logged out.", "您已退出。"),
        "welcome": ("Welcome, {name}", "欢迎，{name}"),
        "home_intro": ("What you may do here:", "您可以使用的功能："),
        "error": ("Error", "错误"),
        "back_home": ("Back to the console", "返回控制台"),
        "err_400": ("Bad request", "请求有误"),
        "err_401": ("Please log in", "请先登录"),
        "err_403": ("Not allowed", "无权访问"),
        "err_404": ("Not found", "未找到"),
        "err_405": ("Method not allowed", "不支持的请求方法"),
        "err_413": ("Request too large", "请求过大"),
        "err_415": ("Unsupported form encoding", "不支持的表单编码"),
        "err_429": ("Too many requests", "请求过多"),
        "err_500": ("Internal error", "内部错误"),
        "err_503": ("The bank is not ready", "系统尚未就绪"),
        "csrf_missing": (
            "The form's security token is missing or wrong: reload the page and try again.",
            "表单安全令牌缺失或无效，请刷新页面后重试。",
        ),
        "no_permission": (
            "Your role ({role}) may not use this page.",
            "您的角色（{role}）无权使用此页面。",
        ),
        "session_needed": (
            "Your session ended: log in again.",
            "会话已结束，请重新登录。",
        ),
        "yes": ("yes", "是"),
        "no": ("no", "否"),
        "none": ("none", "无"),
        "lang_en": ("English", "English"),
        "lang_zh": ("中文", "中文"),
        "role_teller": ("teller", "柜员"),
        "role_supervisor": ("supervisor", "主管"),
        "role_risk_officer": ("risk officer", "风险专员"),
        "role_product_manager": ("product manager", "产品经理"),
        "role_administrator": ("administrator", "管理员"),
        "role_loan_officer": ("loan officer", "信贷员"),
    }
)
