"""The services' typed commands and results on the core link, by their declared types.

A value is written as compact JSON (orjson): a dataclass as the array of its fields in
declaration order (nested dataclasses the same way), `bytes` as hex, `int`, `str`,
`bool`, `None` (an integer beyond JSON's 64 bits, a transfer id, as a "0x..." hex
string), lists and tuples as arrays, `dict[str, Any]` and `Any` as the JSON
they are. It is read back against the type it must be (`decode_as`), exactly: a bool
is not an int, an int is not a str, an array of the wrong length is not the
dataclass; anything else is a `FrameError`, the link's protocol error (the connection
that sent it is closed, nothing of its frame is run).

This is what `CALL` requests carry (core/link/calls.py): the command types are the
services' own (core/services/commands.py, results.py), so a new service call needs no
codec of its own.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, Union

import orjson

from core.link.frames import FrameError

JSON_INT_MIN, JSON_INT_MAX = -(1 << 63), (1 << 64) - 1  # what orjson writes as a number


def encode_value(value: Any) -> Any:
    """`value` as JSON-ready data (dataclasses as arrays, bytes as hex)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [encode_value(getattr(value, name)) for name in _field_names(type(value))]
    if type(value) is int and not JSON_INT_MIN <= value <= JSON_INT_MAX:
        return f"{value:#x}"  # a 128-bit transfer id ("-0x..." below zero)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [encode_value(item) for item in value]
    if isinstance(value, dict):
        return {key: encode_value(item) for key, item in value.items()}
    return value


def encode(value: Any) -> bytes:
    return orjson.dumps(encode_value(value))


def decode(body: bytes, expected: Any, what: str) -> Any:
    """The value of type `expected` that `body` holds; `FrameError` if it holds another."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FrameError(f"{what}: not JSON") from None
    return decode_as(expected, raw, what)


def decode_as(expected: Any, raw: Any, what: str) -> Any:
    """`raw` (decoded JSON) read as a value of type `expected`."""
    return _reader(expected)(raw, what)


Reader = Callable[[Any, str], Any]


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


@cache
def _reader(expected: Any) -> Reader:
    """How to read a value of type `expected` (built once per type)."""
    if expected is Any:
        return lambda raw, what: raw
    if expected is type(None) or expected is None:
        return _exact(type(None), "null")
    if expected is bool:
        return _exact(bool, "a boolean")
    if expected is int:
        return _integer
    if expected is str:
        return _exact(str, "a string")
    if expected is bytes:
        return _bytes
    if dataclasses.is_dataclass(expected) and isinstance(expected, type):
        return _dataclass_reader(expected)
    origin = typing.get_origin(expected)
    arguments = typing.get_args(expected)
    if origin in (Union, types.UnionType):
        readers = [(argument, _reader(argument)) for argument in arguments]
        return _union_reader(readers)
    if origin is dict and arguments[0] is str:
        values = _reader(arguments[1])

        def read_dict(raw: Any, what: str) -> Any:
            if type(raw) is not dict:
                raise FrameError(f"{what}: not an object")
            return {key: values(value, f"{what}.{key}") for key, value in raw.items()}

        return read_dict
    if origin is list:
        item = _reader(arguments[0])

        def read_list(raw: Any, what: str) -> Any:
            if type(raw) is not list:
                raise FrameError(f"{what}: not an array")
            return [item(value, f"{what}[{index}]") for index, value in enumerate(raw)]

        return read_list
    if origin is tuple and arguments and arguments[-1] is not Ellipsis:
        items = [_reader(argument) for argument in arguments]

        def read_tuple(raw: Any, what: str) -> Any:
            if type(raw) is not list or len(raw) != len(items):
                raise FrameError(f"{what}: not an array of {len(items)}")
            return tuple(read(value, f"{what}[{i}]") for i, (read, value) in
                         enumerate(zip(items, raw, strict=True)))  # fmt: skip

        return read_tuple
    raise TypeError(f"the link has no codec for {expected!r}")  # a defect: at import/test time


def _exact(kind: type, name: str) -> Reader:
    def read(raw: Any, what: str) -> Any:
        if type(raw) is not kind:
            raise FrameError(f"{what}: not {name}")
        return raw

    return read


def _integer(raw: Any, what: str) -> int:
    if type(raw) is int:
        return raw
    if type(raw) is str and raw.startswith(("0x", "-0x")) and len(raw) <= 40:
        try:
            value = int(raw, 16)
        except ValueError:
            pass
        else:
            if not JSON_INT_MIN <= value <= JSON_INT_MAX:  # else it had to be a number
                return value
    raise FrameError(f"{what}: not an integer")


def _bytes(raw: Any, what: str) -> bytes:
    if type(raw) is not str:
        raise FrameError(f"{what}: not hex bytes")
    try:
        return bytes.fromhex(raw)
    except ValueError:
        raise FrameError(f"{what}: not hex bytes") from None


def _union_reader(readers: list[tuple[Any, Reader]]) -> Reader:
    def read(raw: Any, what: str) -> Any:
        for _, reader in readers:
            try:
                return reader(raw, what)
            except FrameError:
                continue
        names = " or ".join(getattr(argument, "__name__", str(argument)) for argument, _ in readers)
        raise FrameError(f"{what}: not {names}")

    return read


def _dataclass_reader(cls: type) -> Reader:
    hints = typing.get_type_hints(cls)
    names = _field_names(cls)
    fields = [(name, _reader(hints[name])) for name in names]
    count = len(fields)
    label = cls.__name__

    def read(raw: Any, what: str) -> Any:
        if type(raw) is not list or len(raw) != count:
            raise FrameError(f"{what}: not a {label} ({count} fields)")
        values = {name: reader(value, f"{what}.{name}") for (name, reader), value in
                  zip(fields, raw, strict=True)}  # fmt: skip
        return cls(**values)

    return read
