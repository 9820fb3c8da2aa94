"""Service calls on the core link (`CALL`): a typed command in, a typed result out.

A `Call` names a service call and declares its argument and result types (the
services' own dataclasses, core/services/commands.py and results.py); both sides
share the declaration, so the body on the wire is the arguments' fields
(core/link/codec.py) and nothing is written twice. A `CALL` request's body is
`[name, argument, ...]`; its OK reply's body is the result (`null` for None). A
refusal, a channel problem, an overload or a defect come back as for a transfer
(core/link/ops.py).

An implementation that is a plain function (not a coroutine function: a lookup, a
rate check) runs inline as its frame is read, without a task of its own; a coroutine
function runs in a task, concurrently with the rest.

The core answers only the calls it was given implementations for (`CallTable`); a
call of any other name, or with arguments of the wrong types, is a protocol error:
the connection that sent it is closed and nothing of its frame is run. An
implementation is the services' own coroutine (or a thin adapter of it); the link
server checks every `Caller` an argument names against the channel tier first
(core/link/server.py `check_caller`).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import orjson

from core.link.codec import decode_as, encode_value
from core.link.frames import FrameError

Implementation = Callable[..., Awaitable[Any]] | Callable[..., Any]
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Call(Generic[R]):
    """A service call the link carries: its name, argument types and result type (`R`,
    as the codec reads it: a class, a union, None's type)."""

    name: str
    arguments: tuple[Any, ...]
    result: Any

    def encode(self, arguments: tuple[Any, ...]) -> bytes:
        """A request's body: `[name, argument, ...]`."""
        assert len(arguments) == len(self.arguments), (self.name, arguments)
        return orjson.dumps([self.name, *(encode_value(value) for value in arguments)])

    def decode_result(self, body: bytes) -> R:
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise FrameError(f"the result of {self.name}: not JSON") from None
        return cast(R, decode_as(self.result, raw, f"the result of {self.name}"))

    def encode_result(self, result: Any) -> bytes:
        return orjson.dumps(encode_value(result))


class CallTable:
    """The calls a core answers, each with its implementation."""

    def __init__(self, implementations: Iterable[tuple[Call[Any], Implementation]]) -> None:
        self._calls: dict[str, tuple[Call[Any], Implementation]] = {}
        self.inline: set[str] = set()  # the calls whose implementation is a plain function
        for call, implementation in implementations:
            assert call.name not in self._calls, call.name
            self._calls[call.name] = (call, implementation)
            if not inspect.iscoroutinefunction(implementation):
                self.inline.add(call.name)

    def names(self) -> list[str]:
        """The calls answered (told to each front-end in the WELCOME)."""
        return sorted(self._calls)

    def decode(self, body: bytes) -> tuple[Call[Any], Implementation, tuple[Any, ...]]:
        """The call a request's body asks for, its implementation and its arguments;
        `FrameError` for an unknown name or arguments of the wrong types."""
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise FrameError("a call's body is not JSON") from None
        if type(raw) is not list or not raw or type(raw[0]) is not str:
            raise FrameError("a call's body is not [name, argument, ...]")
        name = raw[0]
        known = self._calls.get(name)
        if known is None:
            raise FrameError(f"unknown call {name[:64]!r}")
        call, implementation = known
        if len(raw) != 1 + len(call.arguments):
            raise FrameError(f"{name}: {len(raw) - 1} arguments, not {len(call.arguments)}")
        arguments = tuple(
            decode_as(expected, value, f"{name} argument {index}")
            for index, (expected, value) in enumerate(zip(call.arguments, raw[1:], strict=True))
        )
        return call, implementation, arguments
