"""The report's charts, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Every chart's x axis is the clock time of the simulated day (HH:MM, or
HH:MM:SS for a window of minutes), faults are shaded and failovers marked.
Each function returns the PNG's bytes. `Figure` objects are made directly (not
through pyplot), so nothing global is kept between charts or runs.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib is imported when a chart is drawn, not with the simulator
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

DPI = 100
DAY_S = 86_400
PALETTE: tuple[str, ...] = (
    "#1f6fb4",
    "#dd5a1e",
    "#2a9646",
    "#963caa",
    "#c8283c",
    "#5a5a5a",
    "#c49a00",
    "#17a2b8",
)
FAULT_COLOR = "#f4b6b6"
FAILOVER_COLOR = "#1d4ed8"
ROLE_COLORS = {
    "primary": "#2a9646",
    "replica": "#9ecae1",
    "promoting": "#f0a030",
    "resyncing": "#e7d44a",
    "down": "#444444",
    "fenced": "#c8283c",
}


@dataclass
class Series:
    label: str
    values: Sequence[float]  # one per x step; NaN = no value
    color: str
    bars: bool = False
    style: str = "-"
    markers: bool = False  # dots on every value (sparse series: isolated values stay visible)


@dataclass
class Span:
    start_s: float
    end_s: float
    label: str


@dataclass
class Mark:
    at_s: float
    label: str


@dataclass
class Panel:
    """One plot of a chart: its series and y axis."""

    title: str
    y_label: str
    series: Sequence[Series]
    log_y: bool = False


@dataclass
class Bar:
    """One interval of a Gantt row."""

    start_s: float
    end_s: float
    label: str
    color: str


@dataclass
class Row:
    name: str
    bars: list[Bar] = field(default_factory=list)


# --- time axis ------------------------------------------------------------------------


def clock_label(seconds: float, with_seconds: bool = False) -> str:
    """HH:MM (or HH:MM:SS) of the day for `seconds` after midnight (days wrap)."""
    whole = math.floor(seconds) % DAY_S
    hours, rest = divmod(whole, 3600)
    if with_seconds:
        return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{hours:02d}:{rest // 60:02d}"


def _tick_step(span_s: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600):
        if span_s / step <= 10:
            return float(step)
    return 43200.0


def _time_axis(axes: Axes, x_max_s: float, clock_start_s: float) -> None:
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    step = _tick_step(x_max_s)
    with_seconds = step < 60
    axes.set_xlim(0, x_max_s)
    axes.xaxis.set_major_locator(MultipleLocator(step))
    axes.xaxis.set_major_formatter(
        FuncFormatter(lambda x, _pos: clock_label(clock_start_s + x, with_seconds))
    )


def _faults_and_failovers(
    axes: Axes, spans: Sequence[Span], marks: Sequence[Mark], *, labels: bool
) -> list[Patch]:
    from matplotlib.patches import Patch

    handles: list[Patch] = []
    for index, span in enumerate(spans):
        axes.axvspan(
            span.start_s,
            max(span.end_s, span.start_s + 1e-6),
            color=FAULT_COLOR,
            alpha=0.45,
            linewidth=0,
            zorder=0,
        )
        if index == 0:
            handles.append(Patch(color=FAULT_COLOR, alpha=0.45, label="fault"))
    for index, mark in enumerate(marks):
        axes.axvline(mark.at_s, color=FAILOVER_COLOR, linewidth=1.4, zorder=3)
        if labels:
            axes.annotate(
                mark.label,
                (mark.at_s, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12 - 11 * (index % 3)),
                textcoords="offset points",
                fontsize=8,
                color=FAILOVER_COLOR,
            )
    return handles


# Fixed margins (pixels) for every time chart, so their x axes line up in the report.
MARGIN_LEFT_PX, MARGIN_RIGHT_PX, MARGIN_TOP_PX, MARGIN_BOTTOM_PX = 150, 190, 70, 48


def _time_chart_margins(figure: Figure) -> None:
    width, height = figure.get_size_inches() * DPI
    figure.subplots_adjust(
        left=min(MARGIN_LEFT_PX / width, 0.2),
        right=1 - min(MARGIN_RIGHT_PX / width, 0.25),
        top=1 - MARGIN_TOP_PX / height,
        bottom=MARGIN_BOTTOM_PX / height,
        hspace=0.4,  # of a panel's height: room for the next panel's title
    )


def _png(figure: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI, metadata={"Software": None})
    return out.getvalue()


def _draw_series(axes: Axes, step_s: float, item: Series, log_y: bool) -> None:
    xs = [(index + 0.5) * step_s for index in range(len(item.values))]
    ys = [
        math.nan if value is None or not math.isfinite(value) or (log_y and value <= 0) else value
        for value in item.values
    ]
    if item.bars:
        axes.bar(
            xs,
            [0 if math.isnan(y) else y for y in ys],
            width=step_s,
            color=item.color,
            label=item.label,
            zorder=2,
        )
    else:
        axes.plot(
            xs,
            ys,
            item.style,
            color=item.color,
            label=item.label,
            linewidth=1.3,
            zorder=2,
            marker="." if item.markers or len(xs) <= 40 else None,
            markersize=3,
        )


# --- charts ---------------------------------------------------------------------------


def panels(
    title: str,
    step_s: float,
    items: Sequence[Panel],
    spans: Sequence[Span] = (),
    marks: Sequence[Mark] = (),
    *,
    clock_start_s: float = 0.0,
    width: int = 1100,
    panel_height: int = 240,
) -> bytes:
    """A time-series chart of one or more stacked panels sharing the clock-time axis."""
    count = max(1, len(items))
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width / DPI, (panel_height * count + 60) / DPI), dpi=DPI)
    axes_list = figure.subplots(count, 1, sharex=True, squeeze=False)[:, 0]
    x_max_s = max(
        [step_s * len(s.values) for panel in items for s in panel.series] + [step_s, 1e-9]
    )
    for index, (axes, panel) in enumerate(zip(axes_list, items, strict=False)):
        extra = _faults_and_failovers(axes, spans, marks, labels=index == 0)
        for item in panel.series:
            _draw_series(axes, step_s, item, panel.log_y)
        if panel.log_y:
            axes.set_yscale("log")
        else:
            axes.set_ylim(bottom=0)
        axes.set_title(panel.title, fontsize=10, loc="left")
        axes.set_ylabel(panel.y_label, fontsize=9)
        axes.grid(True, color="#e4e4e4", linewidth=0.6)
        axes.tick_params(labelsize=8)
        handles, labels = axes.get_legend_handles_labels()
        if not panel.series:
            axes.text(
                0.5,
                0.5,
                "none",
                transform=axes.transAxes,
                ha="center",
                va="center",
                fontsize=10,
                color="#888888",
            )
            axes.set_yticks([])
        if handles or extra:
            axes.legend(
                handles + extra,
                labels + [str(h.get_label()) for h in extra],
                fontsize=8,
                loc="upper left",
                bbox_to_anchor=(1.005, 1.0),
                framealpha=0.9,
            )
        _time_axis(axes, x_max_s, clock_start_s)
    axes_list[-1].set_xlabel("clock time of the simulated day", fontsize=9)
    figure.suptitle(title, fontsize=12, x=0.01, ha="left")
    _time_chart_margins(figure)
    return _png(figure)


def chart(
    title: str,
    y_label: str,
    step_s: float,
    series: Sequence[Series],
    spans: Sequence[Span] = (),
    marks: Sequence[Mark] = (),
    *,
    width: int = 1100,
    height: int = 300,
    log_y: bool = False,
    clock_start_s: float = 0.0,
) -> bytes:
    """One panel, `width` x `height` pixels."""
    return panels(
        title,
        step_s,
        [Panel("", y_label, series, log_y)],
        spans,
        marks,
        clock_start_s=clock_start_s,
        width=width,
        panel_height=height - 60,
    )


def gantt(
    title: str,
    rows: Sequence[Row],
    x_max_s: float,
    marks: Sequence[Mark] = (),
    *,
    clock_start_s: float = 0.0,
    width: int = 1100,
) -> bytes:
    """Rows of labelled intervals (each DC's role, then each fault) on the clock-time axis."""
    height = 90 + 34 * max(1, len(rows))
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    axes = figure.subplots()
    seen: dict[str, str] = {}
    for index, row in enumerate(rows):
        y = len(rows) - 1 - index
        for bar in row.bars:
            end = max(bar.end_s, bar.start_s + x_max_s / 2000)
            axes.barh(
                y,
                end - bar.start_s,
                left=bar.start_s,
                height=0.62,
                color=bar.color,
                edgecolor="white",
                linewidth=0.5,
            )
            if bar.label not in seen:
                seen[bar.label] = bar.color
            if (end - bar.start_s) > x_max_s * 0.06:
                axes.text(
                    bar.start_s + (end - bar.start_s) / 2,
                    y,
                    bar.label,
                    ha="center",
                    va="center",
                    fontsize=7.5,
                    color="white"
                    if bar.color
                    in (
                        ROLE_COLORS["primary"],
                        ROLE_COLORS["down"],
                        ROLE_COLORS["fenced"],
                        FAILOVER_COLOR,
                    )
                    else "#222222",
                )
    for index, mark in enumerate(marks):
        axes.axvline(mark.at_s, color=FAILOVER_COLOR, linewidth=1.2, linestyle="--", zorder=3)
        axes.annotate(
            mark.label,
            (mark.at_s, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, 3 + 10 * (index % 2)),
            textcoords="offset points",
            fontsize=8,
            color=FAILOVER_COLOR,
        )
    axes.set_yticks(range(len(rows)))
    axes.set_yticklabels([row.name for row in reversed(rows)], fontsize=8)
    axes.set_ylim(-0.6, len(rows) - 0.4)
    axes.grid(True, axis="x", color="#e4e4e4", linewidth=0.6)
    axes.tick_params(axis="x", labelsize=8)
    _time_axis(axes, max(x_max_s, 1e-9), clock_start_s)
    axes.set_xlabel("clock time of the simulated day", fontsize=9)
    axes.legend(
        handles=[Patch(color=color, label=label) for label, color in seen.items()],
        fontsize=7.5,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        framealpha=0.9,
    )
    figure.suptitle(title, fontsize=12, x=0.01, ha="left")
    _time_chart_margins(figure)
    return _png(figure)


def comparison(
    title: str, groups: Sequence[tuple[str, float | None, float | None]], labels: tuple[str, str]
) -> bytes:
    """Side-by-side bars (e.g. simulator vs drill) per measure; None = not measured."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.2 * max(1, len(groups)) + 1, 3.4), dpi=DPI)
    axes_list = figure.subplots(1, max(1, len(groups)), squeeze=False)[0]
    for axes, (name, first, second) in zip(axes_list, groups, strict=False):
        values = [first, second]
        bars = axes.bar(
            labels, [0 if v is None else v for v in values], color=[PALETTE[0], PALETTE[1]]
        )
        for bar, value in zip(bars, values, strict=True):
            axes.annotate(
                "n/a" if value is None else f"{value:g}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                fontsize=9,
            )
        axes.set_title(name, fontsize=10)
        axes.tick_params(labelsize=9)
        axes.set_ylim(bottom=0, top=max([v or 0 for v in values] + [1]) * 1.25)
    figure.suptitle(title, fontsize=12, x=0.01, ha="left")
    figure.tight_layout()
    return _png(figure)


def read_png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, checking its signature and header CRC (for tests)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    crc = struct.unpack(">I", data[29:33])[0]
    assert crc == zlib.crc32(data[12:29]) & 0xFFFFFFFF, "bad IHDR CRC"
    width, height = struct.unpack(">II", data[16:24])
    return width, height
