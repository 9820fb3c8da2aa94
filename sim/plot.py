"""Charts as real PNG files, with no plotting library: a raster, lines, a 5x7 font, zlib.

The report needs a few time-series charts (throughput, p99 latency,
replication lag, lost and retried transfers) with faults shaded and
failovers marked. Drawing them into an RGB raster and encoding it (PNG is
a zlib stream of filtered scanlines in CRC-checked chunks) is a page of
code, and keeps matplotlib out of the project's dependencies.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

Color = tuple[int, int, int]

WHITE: Color = (255, 255, 255)
BLACK: Color = (30, 30, 30)
GRID: Color = (228, 228, 228)
AXIS: Color = (120, 120, 120)
FAULT: Color = (253, 226, 226)
FAILOVER: Color = (37, 99, 235)
PALETTE: tuple[Color, ...] = (
    (16, 110, 190),
    (220, 90, 30),
    (40, 150, 70),
    (150, 60, 170),
    (200, 40, 60),
    (90, 90, 90),
)

# A 5x7 bitmap font: each glyph is its character then 7 rows as 2 hex digits (bit 4 = left).
_FONT_HEX = """
00e11131519110e 1040c040404040e 20e11010204081f 31f02040201110e 402060a121f0202
51f101e0101110e 60608101e11110e 71f010204080808 80e11110e11110e 90e11110f01020c
A0e11111f111111 B1e11111e11111e C0e11101010110e D1c12111111121c E1f10101e10101f
F1f10101e101010 G0e11101711110f H1111111f111111 I0e04040404040e J0702020202120c
K11121418141211 L1010101010101f M111b1515111111 N11111915131111 O0e11111111110e
P1e11111e101010 Q0e11111115120d R1e11111e141211 S0f10100e01011e T1f040404040404
U1111111111110e V11111111110a04 W1111111515150a X11110a040a1111 Y1111110a040404
Z1f01020408101f .00000000000c0c ,000000000c0408 :000c0c000c0c00 -0000001f000000
/00010204081000 %18190204081303 (02040808080402 )08040202020408 _0000000000001f
+0004041f040400 =00001f001f0000 >08040201020408 <02040810080402
"""
_FONT_ROWS = {
    glyph[0]: tuple(int(glyph[1 + 2 * row : 3 + 2 * row], 16) for row in range(7))
    for glyph in _FONT_HEX.split()
} | {" ": (0, 0, 0, 0, 0, 0, 0)}


class Canvas:
    """An RGB raster with the few drawing operations the charts need."""

    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        assert 1 <= width <= 10_000 and 1 <= height <= 10_000
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(background) * (width * height))

    def put(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            offset = (y * self.width + x) * 3
            self.pixels[offset : offset + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        x0, x1 = max(0, min(x0, x1)), min(self.width - 1, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.height - 1, max(y0, y1))
        row = bytes(color) * (x1 - x0 + 1)
        for y in range(y0, y1 + 1):
            offset = (y * self.width + x0) * 3
            self.pixels[offset : offset + len(row)] = row

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color, width: int = 1) -> None:
        """Bresenham's line, `width` pixels thick."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        error = dx + dy
        half = width // 2
        while True:
            if width == 1:
                self.put(x0, y0, color)
            else:
                self.rect(x0 - half, y0 - half, x0 - half + width - 1, y0 - half + width - 1, color)
            if x0 == x1 and y0 == y1:
                return
            doubled = 2 * error
            if doubled >= dy:
                error += dy
                x0 += sx
            if doubled <= dx:
                error += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 1) -> int:
        """Draw `text` with its top-left at (x, y); returns the x after it."""
        for char in text.upper():
            rows = _FONT_ROWS.get(
                char, _FONT_ROWS["-"] if char not in _FONT_ROWS else _FONT_ROWS[" "]
            )
            for row_index, bits in enumerate(rows):
                for column in range(5):
                    if bits & (16 >> column):
                        self.rect(
                            x + column * scale,
                            y + row_index * scale,
                            x + column * scale + scale - 1,
                            y + row_index * scale + scale - 1,
                            color,
                        )
            x += 6 * scale
        return x

    def png(self) -> bytes:
        """The raster as a PNG file (8-bit RGB, no filtering, zlib level 6)."""
        stride = self.width * 3
        raw = b"".join(
            b"\x00" + bytes(self.pixels[row * stride : (row + 1) * stride])
            for row in range(self.height)
        )
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw, 6))
            + _chunk(b"IEND", b"")
        )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def read_png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, checking its signature and header CRC (for tests)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    crc = struct.unpack(">I", data[29:33])[0]
    assert crc == zlib.crc32(data[12:29]) & 0xFFFFFFFF, "bad IHDR CRC"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@dataclass
class Series:
    label: str
    values: Sequence[float]  # one per x step; NaN = no value
    color: Color
    bars: bool = False


@dataclass
class Span:
    start_s: float
    end_s: float
    label: str


@dataclass
class Mark:
    at_s: float
    label: str


def chart(
    title: str,
    y_label: str,
    step_s: float,
    series: Sequence[Series],
    spans: Sequence[Span] = (),
    marks: Sequence[Mark] = (),
    *,
    width: int = 1000,
    height: int = 300,
    log_y: bool = False,
) -> bytes:
    """A time-series chart: x in simulated time, faults shaded, failovers as vertical lines."""
    canvas = Canvas(width, height)
    left, right, top, bottom = 70, width - 20, 44, height - 40
    canvas.text(left, 6, title, BLACK, 2)
    count = max((len(s.values) for s in series), default=1)
    x_max_s = max(step_s * count, 1e-9)
    finite = [v for s in series for v in s.values if v is not None and math.isfinite(v)]
    y_max = max(finite, default=1.0)
    y_min_log = 0.0
    if log_y:
        positive = [v for v in finite if v > 0]
        y_min_log = math.floor(math.log10(min(positive))) if positive else 0.0
        y_top_log = math.ceil(math.log10(max(positive))) if positive else 1.0
        if y_top_log <= y_min_log:
            y_top_log = y_min_log + 1

        def y_of(value: float) -> int:
            value = max(value, 10**y_min_log)
            return bottom - round(
                (math.log10(value) - y_min_log) / (y_top_log - y_min_log) * (bottom - top)
            )

        ticks = [10.0**power for power in range(int(y_min_log), int(y_top_log) + 1)]
    else:
        y_top = _nice(y_max if y_max > 0 else 1.0)

        def y_of(value: float) -> int:
            return bottom - round(value / y_top * (bottom - top))

        ticks = [y_top * index / 4 for index in range(5)]

    def x_of(seconds: float) -> int:
        return left + round(seconds / x_max_s * (right - left))

    for span in spans:
        canvas.rect(
            x_of(span.start_s), top, max(x_of(span.end_s), x_of(span.start_s) + 1), bottom, FAULT
        )
    for tick in ticks:
        y = y_of(tick)
        canvas.line(left, y, right, y, GRID)
        canvas.text(4, y - 3, _short(tick), AXIS)
    for seconds, label in _time_ticks(x_max_s):
        x = x_of(seconds)
        canvas.line(x, top, x, bottom, GRID)
        canvas.text(x - 3 * len(label), bottom + 6, label, AXIS)
    canvas.line(left, bottom, right, bottom, AXIS)
    canvas.line(left, top, left, bottom, AXIS)
    canvas.text(left, bottom + 20, y_label, AXIS)
    for number, item in enumerate(series):
        previous: tuple[int, int] | None = None
        for index, value in enumerate(item.values):
            if value is None or not math.isfinite(value):
                previous = None
                continue
            x, y = x_of((index + 0.5) * step_s), y_of(value)
            if item.bars:
                if value > 0:
                    canvas.rect(
                        x_of(index * step_s),
                        y,
                        max(x_of((index + 1) * step_s) - 1, x_of(index * step_s)),
                        bottom - 1,
                        item.color,
                    )
            elif previous is not None:
                canvas.line(previous[0], previous[1], x, y, item.color, 2)
            else:
                canvas.put(x, y, item.color)
            previous = (x, y)
        legend_x = right - 160 * (len(series) - number)
        canvas.rect(legend_x, 26, legend_x + 10, 34, item.color)
        canvas.text(legend_x + 14, 27, item.label[:22], BLACK)
    for mark in marks:
        x = x_of(mark.at_s)
        canvas.line(x, top, x, bottom, FAILOVER, 2)
        canvas.text(x + 4, top + 4, mark.label[:24], FAILOVER)
    return canvas.png()


def _nice(value: float) -> float:
    exponent = math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if value <= factor * 10**exponent:
            return float(factor * 10**exponent)
    return float(10 ** (exponent + 1))


def _short(value: float) -> str:
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    return f"{value:.3g}"


def _time_ticks(x_max_s: float) -> list[tuple[float, str]]:
    for step in (10, 30, 60, 300, 600, 1800, 3600, 7200, 14400):
        if x_max_s / step <= 12:
            break
    ticks = []
    seconds = 0.0
    while seconds <= x_max_s + 1e-9:
        hours, rest = divmod(int(seconds), 3600)
        label = f"{hours}:{rest // 60:02d}" if step >= 60 else f"{int(seconds)}S"
        ticks.append((seconds, label))
        seconds += step
    return ticks
