"""Request schemas: one declaration gives both the validator and the OpenAPI schema.

Validation is strict and precise, because nothing half-valid may reach the
ledger: unknown fields, wrong types, floats or booleans where an integer is
due, amounts that are zero, negative or past int64 each fail with a 422
naming the field by JSON Pointer (RFC 6901) and, in the detail, in the
``$.transfers[3].amount_minor`` form the rest of Tally uses.
"""

from __future__ import annotations

import binascii
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from channels.http.problems import invalid_at, refusal_problem
from core.services.refusals import Code, Refusal
from ledger.types import ID_MAX, INT64_MAX

ACCOUNT_ID_PATTERN = "^[1-9][0-9]{0,37}$"  # 38 digits stay below 2**128 - 1
TRANSFER_ID_PATTERN = "^[0-9a-f]{32}$"
_ACCOUNT_ID_RE = re.compile(ACCOUNT_ID_PATTERN)
_TRANSFER_ID_RE = re.compile(TRANSFER_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class F:
    """One field: its JSON type and constraints.

    kind: amount | account_id | transfer_id | string | integer | boolean | enum | object | array
    | ip (an IPv4 or IPv6 address in its usual text form) | json_object (any JSON object of at
    most `max_length` bytes once encoded, whose fields the service checks: an approval's payload)
    | base64 (standard base64 with padding of at most `max_length` bytes once decoded; the
    handler decodes it strictly)

    `refusal`: the service refusal a value outside `values` (enum) or over `max_length`
    (base64) is answered with instead of the 422, with `refusal_extras` (an image's type
    is 415, its size 413: the same answer the service gives for them).
    """

    kind: str
    required: bool = True
    description: str = ""
    pattern: str | None = None
    min_length: int = 0
    max_length: int = 0
    minimum: int | None = None
    maximum: int | None = None
    values: tuple[str, ...] = ()
    fields: Mapping[str, F] = field(default_factory=dict)
    items: F | None = None
    min_items: int = 0
    max_items: int = 0
    example: Any = None
    refusal: Code | None = None
    refusal_extras: Mapping[str, Any] = field(default_factory=dict)

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any]
        if self.kind == "amount":
            schema = {
                "type": "integer",
                "minimum": 1 if self.minimum is None else self.minimum,
                "maximum": INT64_MAX,
                "description": "integer minor units (fen)",
            }
        elif self.kind == "account_id":
            schema = {"type": "string", "pattern": ACCOUNT_ID_PATTERN}
        elif self.kind == "transfer_id":
            schema = {"type": "string", "pattern": TRANSFER_ID_PATTERN}
        elif self.kind == "string":
            schema = {"type": "string"}
            if self.pattern:
                schema["pattern"] = self.pattern
            if self.min_length:
                schema["minLength"] = self.min_length
            if self.max_length:
                schema["maxLength"] = self.max_length
        elif self.kind == "integer":
            schema = {"type": "integer"}
            if self.minimum is not None:
                schema["minimum"] = self.minimum
            if self.maximum is not None:
                schema["maximum"] = self.maximum
        elif self.kind == "ip":
            schema = {
                "type": "string",
                "maxLength": IP_LENGTH_MAX,
                "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
            }
        elif self.kind == "json_object":
            schema = {"type": "object"}
        elif self.kind == "base64":
            schema = {
                "type": "string",
                "contentEncoding": "base64",
                "pattern": BASE64_PATTERN,
                "maxLength": base64_length(self.max_length),
            }
            if self.min_length:
                schema["minLength"] = self.min_length
        elif self.kind == "boolean":
            schema = {"type": "boolean"}
        elif self.kind == "enum":
            schema = {"type": "string", "enum": list(self.values)}
        elif self.kind == "object":
            schema = object_schema(self.fields)
        elif self.kind == "array":
            assert self.items is not None
            schema = {"type": "array", "items": self.items.json_schema()}
            if self.min_items:
                schema["minItems"] = self.min_items
            if self.max_items:
                schema["maxItems"] = self.max_items
        else:
            raise AssertionError(self.kind)
        if self.description:
            schema["description"] = (
                self.description + " (" + schema["description"] + ")"
                if "description" in schema
                else self.description
            )
        if self.example is not None:
            schema["examples"] = [self.example]
        return schema


def object_schema(fields: Mapping[str, F]) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: spec.json_schema() for name, spec in fields.items()},
        "additionalProperties": False,
    }
    required = [name for name, spec in fields.items() if spec.required]
    if required:
        schema["required"] = required
    return schema


def fail(path: str, message: str) -> Exception:
    return invalid_at(path, message)


def check_object(value: Any, fields: Mapping[str, F], path: str = "") -> dict[str, Any]:
    """Validate `value` against `fields`; returns it (a dict) or raises a 422 Problem."""
    if not isinstance(value, dict):
        raise fail(path, f"expected an object, got {_type_name(value)}")
    for name in value:
        if name not in fields:
            raise fail(f"{path}/{name}", f"unknown field {name[:64]!r}")
    for name, spec in fields.items():
        if name not in value:
            if spec.required:
                raise fail(f"{path}/{name}", "missing required field")
            continue
        check_value(value[name], spec, f"{path}/{name}")
    return value


def check_alternatives(value: dict[str, Any], alternatives: tuple[Mapping[str, F], ...]) -> None:
    """`value` (already checked against the union of `alternatives`) holds exactly one
    alternative: all of its required fields and no field of another (else a 422 naming
    the first field missing, or the first that does not belong)."""
    for fields in alternatives:
        if any(name in value for name in fields):
            for name in value:
                if name not in fields:
                    others = " or ".join(
                        "+".join(other) for other in alternatives if other is not fields
                    )
                    raise fail(f"/{name}", f"send either {'+'.join(fields)} or {others}")
            for name, spec in fields.items():
                if spec.required and name not in value:
                    raise fail(f"/{name}", "missing required field")
            return
    first = next(iter(alternatives[0]))
    raise fail(
        f"/{first}",
        "missing required field (send either "
        + " or ".join("+".join(fields) for fields in alternatives)
        + ")",
    )


def quick_check(fields: Mapping[str, F]) -> Callable[[Any], bool] | None:
    """A fast yes for the usual body of `fields`, if they allow one: a predicate that is
    True only for a value `check_object(value, fields)` accepts (False: not known, run
    `check_object` for the exact problem). Only for objects whose required fields are all
    account ids or amounts (the money routes); None for others."""
    simple = {
        name: spec.kind == "amount"
        for name, spec in fields.items()
        if spec.kind == "account_id" or (spec.kind == "amount" and spec.minimum is None)
    }
    required = [name for name, spec in fields.items() if spec.required]
    if not required or not set(required) <= set(simple):
        return None
    account_re = _ACCOUNT_ID_RE

    def check(value: Any) -> bool:
        if type(value) is not dict:
            return False
        for name, item in value.items():
            amount = simple.get(name)
            if amount is None:
                return False
            if amount:
                if type(item) is not int or not 1 <= item <= INT64_MAX:
                    return False
            elif type(item) is not str or account_re.match(item) is None:
                return False
        return all(name in value for name in required)

    return check


def check_value(value: Any, spec: F, path: str) -> None:
    kind = spec.kind
    if kind in ("amount", "integer"):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float):
                if abs(value) >= 2**63:
                    raise fail(path, f"must be an integer <= {INT64_MAX} (int64)")
                raise fail(path, "must be an integer (minor units, no fractions)")
            raise fail(path, f"expected an integer, got {_type_name(value)}")
        low = spec.minimum if spec.minimum is not None else (1 if kind == "amount" else None)
        high = INT64_MAX if kind == "amount" else spec.maximum
        if kind == "amount" and value > INT64_MAX:
            raise fail(path, f"must be <= {INT64_MAX} (int64)")
        if low is not None and value < low:
            raise fail(path, f"must be >= {low}" if low != 1 else "must be > 0")
        if high is not None and value > high:
            raise fail(path, f"must be <= {high}")
    elif kind == "account_id":
        if not isinstance(value, str) or not _ACCOUNT_ID_RE.match(value):
            raise fail(path, "expected an account id: a string of 1-38 digits, not starting with 0")
    elif kind == "transfer_id":
        if not isinstance(value, str) or not _TRANSFER_ID_RE.match(value):
            raise fail(path, "expected a transfer id: 32 lowercase hex digits")
    elif kind == "string":
        if not isinstance(value, str):
            raise fail(path, f"expected a string, got {_type_name(value)}")
        if spec.min_length and len(value) < spec.min_length:
            raise fail(path, f"must be at least {spec.min_length} characters")
        if spec.max_length and len(value) > spec.max_length:
            raise fail(path, f"must be at most {spec.max_length} characters")
        # Matched whole: `$` alone would let a trailing newline through ("123456\n").
        if spec.pattern and not re.fullmatch(spec.pattern, value):
            raise fail(path, f"must match {spec.pattern}")
    elif kind == "ip":
        if not isinstance(value, str):
            raise fail(path, f"expected an IP address, got {_type_name(value)}")
        if not ip_address_ok(value):
            raise fail(path, "expected an IPv4 or IPv6 address (no zone)")
    elif kind == "json_object":
        if not isinstance(value, dict):
            raise fail(path, f"expected an object, got {_type_name(value)}")
    elif kind == "base64":  # its alphabet and padding: `decode_base64`, in the handler
        if not isinstance(value, str):
            raise fail(path, f"expected a base64 string, got {_type_name(value)}")
        if len(value) > base64_length(spec.max_length):
            if spec.refusal is not None:
                raise refusal_problem(
                    Refusal(
                        spec.refusal,
                        f"{len(value)} base64 characters",
                        extras=dict(spec.refusal_extras),
                    )
                )
            raise fail(path, f"must be at most {base64_length(spec.max_length)} characters")
        if spec.min_length and len(value) < spec.min_length:
            raise fail(path, f"must be at least {spec.min_length} characters")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise fail(path, f"expected true or false, got {_type_name(value)}")
    elif kind == "enum":
        if not isinstance(value, str) or value not in spec.values:
            if spec.refusal is not None and isinstance(value, str):
                raise refusal_problem(
                    Refusal(
                        spec.refusal,
                        f"{value[:64]!r} at `{path}`",
                        extras=dict(spec.refusal_extras),
                    )
                )
            raise fail(path, "expected one of " + ", ".join(spec.values))
    elif kind == "object":
        check_object(value, spec.fields, path)
    elif kind == "array":
        if not isinstance(value, list):
            raise fail(path, f"expected an array, got {_type_name(value)}")
        if spec.min_items and len(value) < spec.min_items:
            raise fail(path, f"needs at least {spec.min_items} item(s)")
        if spec.max_items and len(value) > spec.max_items:
            raise fail(path, f"holds at most {spec.max_items} items")
        assert spec.items is not None
        for index, item in enumerate(value):
            check_value(item, spec.items, f"{path}/{index}")
    else:
        raise AssertionError(kind)


# Standard base64 (RFC 4648 section 4) with its padding: whole 4-character groups.
BASE64_PATTERN = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def base64_length(size: int) -> int:
    """The length of `size` bytes in padded base64."""
    return 4 * ((size + 2) // 3)


def decode_base64(text: str, path: str) -> bytes:
    """`text` (schema-checked: a string of bounded length) decoded strictly: only the
    standard alphabet, whole groups, padding only at the end (else 422 at `path`)."""
    # Strict mode alone takes padding after a whole group ("QUJD=", "QUJD===="): whole
    # groups and at most "==" make it exactly BASE64_PATTERN (checked exhaustively up
    # to 8 characters), at a tenth of the regex's cost on a megabyte.
    if len(text) % 4 == 0 and not text.endswith("==="):
        try:
            return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
        except (UnicodeEncodeError, binascii.Error):
            pass
    raise fail(path, "expected standard base64 (A-Z a-z 0-9 + /, padded with =)")


IP_LENGTH_MAX = 45  # "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"


def ip_address_ok(text: str) -> bool:
    """Whether `text` is an IPv4 or IPv6 address (without a "%zone": a scope means nothing
    off the client's own link)."""
    if not 2 <= len(text) <= IP_LENGTH_MAX or "%" in text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def account_id(value: str) -> int:
    number = int(value)
    assert 0 < number < ID_MAX
    return number


def account_id_param(value: str, name: str = "account_id") -> int:
    if not _ACCOUNT_ID_RE.match(value):
        raise fail(f"/{name}", "expected an account id: 1-38 digits, not starting with 0")
    return int(value)


def transfer_id_param(value: str, name: str = "transfer_id") -> int:
    if not _TRANSFER_ID_RE.match(value):
        raise fail(f"/{name}", "expected a transfer id: 32 lowercase hex digits")
    number = int(value, 16)
    if number == 0 or number == ID_MAX:
        raise fail(f"/{name}", "transfer ids 0 and 2**128-1 are reserved")
    return number


def transfer_id_text(number: int) -> str:
    return f"{number:032x}"
