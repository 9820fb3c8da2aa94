"""The console's approvals inbox and parameter pages over plain httpx, against a real server.

A parameter edit in the console is an approval request, never a change: the product
manager's limits edit leaves the version in force as it was until an administrator
approves it, and then the history names the request. The maker-checker rules are the
approvals service's (core/services/approvals.py) and hold in the console as on the JSON
routes: a rejection needs a reason, the maker never decides their own request, a
decided request cannot be decided again, a role without `request:<kind>` or
`approve:<kind>` is refused 403; every refusal is a page with a clear message and the
refusal's status, never a 500.
"""

from __future__ import annotations

import html
import re

import httpx
import pytest

from tests.admin_helpers import operator_client
from tests.console.conftest import CONSOLE, ConsoleSession, Sessions
from tests.http_helpers import TallyServer, register

REQUEST_ID = re.compile(r"A[0-9a-f]{12}")
_TEXTAREA = re.compile(r'<textarea name="text"[^>]*>\n?(.*?)</textarea>', re.DOTALL)
_BASE_VERSION = re.compile(r'name="base_version" value="(-?\d+)"')
_CURRENT = re.compile(r'<pre id="current">(.*?)</pre>', re.DOTALL)


def edit_form(session: ConsoleSession, kind: str) -> tuple[str, str]:
    """The text form#edit is prefilled with, and the version it was made against."""
    page = session.get(f"{CONSOLE}/parameters/{kind}")
    assert page.status_code == 200, page.text[:2000]
    text = _TEXTAREA.search(page.text)
    version = _BASE_VERSION.search(page.text)
    assert text is not None and version is not None, "no form#edit on the page"
    return html.unescape(text.group(1)), version.group(1)


def in_force(session: ConsoleSession, kind: str) -> str:
    page = session.get(f"{CONSOLE}/parameters/{kind}")
    assert page.status_code == 200, page.text[:2000]
    found = _CURRENT.search(page.text)
    assert found is not None, "no pre#current"
    return html.unescape(found.group(1))


def propose(
    session: ConsoleSession, kind: str, change: str, reason: str = "console test"
) -> httpx.Response:
    """Submit form#edit with the text in force changed by appending `change` (a comment
    line: a valid file that differs), as a browser would send it (CRLF line ends)."""
    text, base_version = edit_form(session, kind)
    sent = (text + change + "\n").replace("\n", "\r\n")
    return session.post(
        f"{CONSOLE}/parameters/{kind}",
        {"text": sent, "base_version": base_version, "reason": reason},
    )


def created_request(response: httpx.Response) -> str:
    """The request id the edit's 303 redirect names."""
    assert response.status_code == 303, (response.status_code, response.text[:2000])
    location = response.headers["location"]
    assert location.startswith(f"{CONSOLE}/approvals/"), location
    request_id = location.rsplit("/", 1)[1]
    assert REQUEST_ID.fullmatch(request_id), location
    return request_id


def error_of(page: httpx.Response) -> str:
    found = re.search(r'<div id="error"[^>]*>(.*?)</div>', page.text, re.DOTALL)
    assert found is not None, page.text[:3000]
    return html.unescape(re.sub(r"<[^>]+>", " ", found.group(1)))


def section(page: str, element_id: str) -> str:
    """The HTML from the element with `element_id` to the end of its first closing tag of
    the same name (enough for the tables and lists here: none nests its own kind)."""
    found = re.search(rf'<(\w+)[^>]*\bid="{element_id}"', page)
    assert found is not None, f"no #{element_id}"
    tag = found.group(1)
    end = page.index(f"</{tag}>", found.start())
    return page[found.start() : end]


def test_an_edit_is_a_pending_request_until_a_checker_approves_it(sessions: Sessions) -> None:
    """product1's limits edit creates a pending request (its page: #request-id, the diff
    with the added line marked `add`, no approve form for its maker) and changes nothing in
    force; admin1 sees it in table#pending and approves it: the version in force moves on,
    the history lists the request, #result says applied; approving it again is refused on
    the page with 409."""
    product1, admin1 = sessions["product1"], sessions["admin1"]
    before_text = in_force(product1, "limits")
    _, before_version = edit_form(product1, "limits")
    request_id = created_request(
        propose(product1, "limits", "# approved in the console", reason="tidy <b>up</b>")
    )

    page = product1.get(f"{CONSOLE}/approvals/{request_id}")
    assert page.status_code == 200, page.text[:2000]
    assert f'<span id="request-id">{request_id}</span>' in page.text
    diff = section(page.text, "diff")
    added = re.findall(r'<tr class="add">.*?</tr>', diff, re.DOTALL)
    assert len(added) == 1 and "# approved in the console" in added[0], diff
    assert '<tr class="del">' not in diff  # CRLF from the browser: no line rewritten
    assert '<tr class="ctx">' in diff
    assert "tidy &lt;b&gt;up&lt;/b&gt;" in page.text  # the maker's reason, escaped
    assert 'id="approve"' not in page.text and 'id="reject"' not in page.text
    assert 'id="decide-note"' in page.text

    assert in_force(product1, "limits") == before_text  # a request changes nothing
    assert edit_form(product1, "limits")[1] == before_version

    inbox = admin1.get(f"{CONSOLE}/approvals")
    assert inbox.status_code == 200
    pending = section(inbox.text, "pending")
    assert f'<a class="request" href="/console/approvals/{request_id}">' in pending
    detail = admin1.get(f"{CONSOLE}/approvals/{request_id}")
    assert 'id="approve"' in detail.text and 'id="reject"' in detail.text

    approved = admin1.post(f"{CONSOLE}/approvals/{request_id}/approve", {"reason": "ok"})
    assert approved.status_code == 303, approved.text[:2000]
    assert approved.headers["location"] == f"{CONSOLE}/approvals/{request_id}"
    after = admin1.get(approved.headers["location"])
    result = section(after.text, "result")
    assert 'data-state="applied"' in result, result
    assert "admin1" in result

    assert in_force(product1, "limits").endswith("# approved in the console\n")
    parameter = product1.get(f"{CONSOLE}/parameters/limits")
    versions = section(parameter.text, "versions")
    assert f'data-version="{int(before_version) + 1}"' in versions
    assert request_id in versions and "product1" in versions and "admin1" in versions
    assert f'name="base_version" value="{int(before_version) + 1}"' in parameter.text
    assert request_id not in section(admin1.get(f"{CONSOLE}/approvals").text, "pending")

    again = admin1.post(f"{CONSOLE}/approvals/{request_id}/approve", {"reason": "twice"})
    assert again.status_code == 409, again.text[:2000]
    assert "no longer pending" in error_of(again)


def test_a_rejection_needs_a_reason(sessions: Sessions) -> None:
    """Rejecting with an empty reason is refused on the page (422, the request still
    pending); with a reason the request is rejected and #result shows who and why, and
    the text in force is unchanged."""
    product1, admin1 = sessions["product1"], sessions["admin1"]
    before = in_force(product1, "limits")
    request_id = created_request(propose(product1, "limits", "# to be rejected"))
    path = f"{CONSOLE}/approvals/{request_id}"

    empty = admin1.post(path + "/reject", {"reason": "  "})
    assert empty.status_code == 422, empty.text[:2000]
    assert "reason" in error_of(empty)
    assert 'data-state="pending"' in empty.text
    assert 'id="reject"' in empty.text  # the form again, to give one

    rejected = admin1.post(path + "/reject", {"reason": "not <now>"})
    assert rejected.status_code == 303, rejected.text[:2000]
    result = section(admin1.get(path).text, "result")
    assert 'data-state="rejected"' in result and "not &lt;now&gt;" in result
    assert in_force(product1, "limits") == before
    listed = admin1.get(f"{CONSOLE}/approvals?state=rejected&kind=limits")
    assert request_id in section(listed.text, "requests")


def test_the_maker_never_decides_their_own_request(sessions: Sessions) -> None:
    """risk1 may both request and approve risk rules, but not their own request: the page
    offers them no decision forms, and a POST is refused on the page with 403
    (approval-self) while the request stays pending; risk2 may then approve it."""
    risk1, risk2 = sessions["risk1"], sessions["risk2"]
    text, base_version = edit_form(risk1, "risk")
    version = re.search(r"(?m)^version\s*=\s*(\d+)", text)
    assert version is not None, text[:500]
    new_text = text.replace(version.group(0), f"version = {int(version.group(1)) + 1}", 1)
    request_id = created_request(
        risk1.post(
            f"{CONSOLE}/parameters/risk",
            {"text": new_text, "base_version": base_version, "reason": "next version"},
        )
    )
    path = f"{CONSOLE}/approvals/{request_id}"
    own = risk1.get(path)
    assert 'id="approve"' not in own.text and 'id="decide-note"' in own.text

    for action in ("approve", "reject"):
        refused = risk1.post(f"{path}/{action}", {"reason": "mine"})
        assert refused.status_code == 403, refused.text[:2000]
        assert "maker" in error_of(refused)
    assert 'data-state="pending"' in risk1.get(path).text

    approved = risk2.post(f"{path}/approve", {"reason": "four eyes"})
    assert approved.status_code == 303, approved.text[:2000]
    assert 'data-state="applied"' in section(risk2.get(path).text, "result")


def test_a_role_without_the_kinds_permission_is_refused_403(sessions: Sessions) -> None:
    """A teller (no request:limits) and an administrator (approves limits, never requests
    them) get 403 for a limits edit and see no form#edit; a teller (no approve:limits) gets
    403 deciding a limits request; nothing is created or decided."""
    product1 = sessions["product1"]
    text, base_version = edit_form(product1, "limits")
    form = {"text": text + "# nope\n", "base_version": base_version}
    for name in ("teller1", "admin1"):
        session = sessions[name]
        page = session.get(f"{CONSOLE}/parameters/limits")
        assert page.status_code == 200
        assert 'id="edit"' not in page.text and 'id="edit-note"' in page.text
        refused = session.post(f"{CONSOLE}/parameters/limits", form)
        assert refused.status_code == 403, (name, refused.status_code, refused.text[:2000])
        assert "request:limits" in refused.text
    assert not has_pending(sessions["admin1"], "limits")

    request_id = created_request(propose(product1, "limits", "# for the teller"))
    path = f"{CONSOLE}/approvals/{request_id}"
    teller = sessions["teller1"]
    assert 'id="approve"' not in teller.get(path).text
    for action in ("approve", "reject"):
        refused = teller.post(f"{path}/{action}", {"reason": "x"})
        assert refused.status_code == 403, refused.text[:2000]
        assert "approve:limits" in refused.text
    assert 'data-state="pending"' in teller.get(path).text
    assert sessions["admin1"].post(f"{path}/reject", {"reason": "cleanup"}).status_code == 303


def has_pending(session: ConsoleSession, kind: str) -> bool:
    """Whether the inbox lists a pending request of `kind`."""
    page = session.get(f"{CONSOLE}/approvals?kind={kind}")
    assert page.status_code == 200
    return 'class="request"' in section(page.text, "pending")


def test_an_invalid_text_is_shown_with_every_problem_and_kept(sessions: Sessions) -> None:
    """A limits text that does not validate is not a request: the page comes back 422
    with every problem in #errors and the text as typed in the form."""
    product1 = sessions["product1"]
    text, base_version = edit_form(product1, "limits")
    broken = text + "\n[products.broken]\nid = 'x'\nunknown_key = 1\n"
    page = product1.post(
        f"{CONSOLE}/parameters/limits", {"text": broken, "base_version": base_version}
    )
    assert page.status_code == 422, page.text[:2000]
    problems = html.unescape(section(page.text, "errors"))
    assert "products.broken.id" in problems and "products.broken.kind" in problems, problems
    kept = _TEXTAREA.search(page.text)
    assert kept is not None and html.unescape(kept.group(1)) == broken
    assert not has_pending(sessions["admin1"], "limits")

    same = product1.post(
        f"{CONSOLE}/parameters/limits", {"text": text, "base_version": base_version}
    )
    assert same.status_code == 422 and "nothing to change" in section(same.text, "errors")
    stale = product1.post(
        f"{CONSOLE}/parameters/limits",
        {"text": text + "# stale\n", "base_version": str(int(base_version) - 1)},
    )
    assert stale.status_code == 409, stale.text[:2000]


def test_an_operation_shows_its_payload_and_is_decided_in_the_console(
    server: TallyServer, sessions: Sessions
) -> None:
    """A teller's credit limit request (made over the JSON admin route) shows its payload
    as a definition list (the amount in fen and in yuan), no diff; a risk officer approves
    it in the console and #result shows it applied with the service's result."""
    with server.client("counter") as counter:
        customer = register(counter, "孙八")
    with operator_client(server, "teller1") as teller:
        made = teller.post(
            "/v1/admin/approvals",
            {
                "kind": "credit_limit",
                "payload": {"customer_id": customer["customer_id"], "limit_minor": 5_000_050},
                "reason": "salary account",
            },
        )
    assert made.status_code == 201, made.text
    path = f"{CONSOLE}/approvals/{made.json()['id']}"
    risk1 = sessions["risk1"]
    page = risk1.get(path)
    assert page.status_code == 200, page.text[:2000]
    payload = html.unescape(section(page.text, "payload"))
    assert customer["customer_id"] in payload and "5000050 (50,000.50 CNY)" in payload
    assert 'id="diff"' not in page.text
    approved = risk1.post(path + "/approve", {"reason": "within policy"})
    assert approved.status_code == 303, approved.text[:2000]
    result = section(risk1.get(path).text, "result")
    assert 'data-state="applied"' in result and "risk1" in result


def test_the_parameters_page_lists_every_registered_kind(sessions: Sessions) -> None:
    """/console/parameters lists each kind the approvals service registers with its version
    in force, each linking to its page; the labels come in Chinese with ?lang=zh."""
    page = sessions["teller1"].get(f"{CONSOLE}/parameters")
    assert page.status_code == 200
    table = section(page.text, "parameters")
    for kind in ("limits", "deposits", "lpr", "loans", "risk", "channels"):
        assert f'data-kind="{kind}"' in table, kind
        assert f'href="/console/parameters/{kind}"' in table
        kind_page = sessions["teller1"].get(f"{CONSOLE}/parameters/{kind}")
        assert kind_page.status_code == 200, (kind, kind_page.text[:2000])
        assert 'id="current"' in kind_page.text and 'id="versions"' in kind_page.text
    chinese = sessions["teller1"].get(f"{CONSOLE}/approvals?lang=zh")
    assert "审批收件箱" in chinese.text


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/approvals/A000000000000", 404),
        ("/approvals/not-an-id", 404),
        ("/parameters/nothing", 404),
        ("/parameters/reversal", 404),
        ("/approvals?state=bogus", 400),
        ("/approvals?kind=bogus", 400),
    ],
)
def test_bad_addresses_are_precise_4xx_pages(sessions: Sessions, path: str, status: int) -> None:
    """An unknown request, parameter kind, state or kind is an error page with its 4xx."""
    page = sessions["admin1"].get(CONSOLE + path)
    assert page.status_code == status, page.text[:2000]
    assert "text/html" in page.headers["content-type"]


def test_a_form_without_base_version_is_400(sessions: Sessions) -> None:
    """form#edit's POST names the version edited; a form without it is a 400 page."""
    page = sessions["product1"].post(f"{CONSOLE}/parameters/limits", {"text": "x"})
    assert page.status_code == 400, page.text[:2000]
