"""A stacked bar chart of messages per hour and server, laid out here and drawn as SVG by
its template: no charting library, no script, nothing for the browser to compute."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

WIDTH = 720
HEIGHT = 260
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 30
PALETTE_SIZE = 8


@dataclass(frozen=True)
class Series:
    name: str
    counts: list[int]

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    palette: int
    title: str


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    right: float
    top: int
    bottom: float
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    series: list[Series]
    hours: list[datetime]
    total: int

    def palette(self, index: int) -> int:
        return index % PALETTE_SIZE

    @property
    def rows(self) -> list[tuple[datetime, list[int], int]]:
        """The same numbers as a table: per hour, the count of each series and the sum."""
        rows = []
        for i, hour in enumerate(self.hours):
            counts = [one.counts[i] for one in self.series]
            rows.append((hour, counts, sum(counts)))
        return rows


def nice_step(peak: int, ticks: int = 4) -> int:
    """A whole step of 1, 2 or 5 times a power of ten giving about `ticks` gridlines."""
    raw = max(peak, 1) / ticks
    magnitude = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    for multiple in (1, 2, 5, 10):
        if multiple * magnitude >= raw:
            return max(1, int(multiple * magnitude))
    return max(1, int(10 * magnitude))


def hourly_chart(hours: list[datetime], series: list[Series]) -> Chart:
    right = WIDTH - RIGHT
    bottom = HEIGHT - BOTTOM
    plot_height = bottom - TOP
    slot = (right - LEFT) / max(len(hours), 1)
    totals = [sum(s.counts[i] for s in series) for i in range(len(hours))]
    peak = max(totals, default=0)
    step = nice_step(peak)
    top_value = max(step, math.ceil(peak / step) * step)
    scale = plot_height / top_value

    bars = []
    for i, hour in enumerate(hours):
        base = float(bottom)
        for index, one in enumerate(series):
            count = one.counts[i]
            if not count:
                continue
            height = count * scale
            base -= height
            bars.append(
                Bar(
                    x=round(LEFT + i * slot + slot * 0.15, 2),
                    y=round(base, 2),
                    width=round(slot * 0.7, 2),
                    height=round(height, 2),
                    palette=index % PALETTE_SIZE,
                    title=f"{hour:%H}:00 to {(hour.hour + 1) % 24:02d}:00 UTC: "
                    f"{one.name}, {count} sent",
                )
            )
    y_ticks = [
        Tick(round(bottom - value * scale, 2), str(value))
        for value in range(0, top_value + 1, step)
    ]
    x_ticks = [
        Tick(round(LEFT + i * slot + slot / 2, 2), f"{hour:%H}:00")
        for i, hour in enumerate(hours)
        if i % 3 == (len(hours) - 1) % 3
    ]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        right=right,
        top=TOP,
        bottom=bottom,
        bars=bars,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        series=series,
        hours=hours,
        total=sum(totals),
    )
