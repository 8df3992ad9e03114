"""Charts drawn on the server as inline SVG: the geometry of bar charts (bars, a value
axis with round ticks, the category labels to show) and their markup
(:meth:`BarChart.svg`). No JavaScript and no files from elsewhere: a chart is part of the
page, readable at 360 px, with its values as text for screen readers and for people.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from markupsafe import Markup, escape

#: The drawing's size in SVG units; it is scaled to the width of its box.
WIDTH, HEIGHT = 320, 160
#: Room left of the plot for the value axis' labels, and below it for the categories'.
LEFT, BOTTOM, TOP = 52, 20, 14
#: Category labels shown at most along the bottom (every n-th one when there are more).
MAX_LABELS = 6
#: Bars with their value written above them at most (more would overlap at 360 px).
MAX_VALUE_LABELS = 12

Number = int | Decimal


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    #: Which series it belongs to (0, 1 …): its colour.
    series: int
    #: The value as people read it, and what it is: "2026-11-02: ¥99.00".
    text: str
    title: str


@dataclass(frozen=True)
class Tick:
    y: float
    text: str


@dataclass(frozen=True)
class Label:
    x: float
    text: str


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    left: int
    base: float
    bars: list[Bar]
    ticks: list[Tick]
    labels: list[Label]
    #: Whether the bars carry their values written above them.
    values_shown: bool

    def svg(self, title: str, element_id: str) -> Markup:
        """The chart as inline SVG, ``role="img"`` titled ``title``: an axis with its
        values, the categories along the bottom, each bar's value in its tooltip and, when
        there are few bars, written above it. Written here rather than in a template: a
        month's chart is a hundred elements, and a template's cost per element was a tenth
        of the dashboard's. Text is escaped; the rest are numbers."""
        w, h, left, base = self.width, self.height, self.left, self.base
        chart_id = escape(element_id)
        parts = [
            f'<svg viewBox="0 0 {w} {h}" role="img" aria-labelledby="{chart_id}-title"'
            f' class="chart bars" id="{chart_id}">',
            f'<title id="{chart_id}-title">{escape(title)}</title>',
        ]
        for tick in self.ticks:
            parts.append(
                f'<line class="grid" x1="{left}" y1="{tick.y}" x2="{w}" y2="{tick.y}"></line>'
                f'<text class="tick" x="{left - 3}" y="{tick.y + 3}" text-anchor="end">'
                f"{escape(tick.text)}</text>"
            )
        for bar in self.bars:
            text = escape(bar.text)
            parts.append(
                f'<rect class="series-{bar.series}" x="{bar.x}" y="{bar.y}" width="{bar.width}"'
                f' height="{bar.height}" data-value="{text}"><title>{escape(bar.title)}</title>'
                "</rect>"
            )
            if self.values_shown and bar.height > 0:
                parts.append(
                    f'<text class="value" x="{round(bar.x + bar.width / 2, 2)}" y="{bar.y - 2}"'
                    f' text-anchor="middle">{text}</text>'
                )
        parts.append(f'<line class="axis" x1="{left}" y1="{base}" x2="{w}" y2="{base}"></line>')
        parts += [
            f'<text class="category" x="{label.x}" y="{h - 6}" text-anchor="middle">'
            f"{escape(label.text)}</text>"
            for label in self.labels
        ]
        parts.append("</svg>")
        # Safe: every text above went through escape(); the rest are numbers.
        return Markup("\n".join(parts))  # noqa: S704


def nice_step(top: Number, count: int = 4) -> Number:
    """A round step (1, 2 or 5 × a power of ten) that reaches ``top`` in about ``count``
    ticks; at least 1 for whole numbers."""
    if top <= 0:
        return 1
    raw = float(top) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if isinstance(top, int) or step >= 1:
        return max(1, round(step))
    return Decimal(str(step))


def bar_chart(
    categories: Sequence[str],
    series: Sequence[Sequence[Number]],
    *,
    text: Callable[[Number], str] = str,
    titles: Sequence[str] = ("",),
) -> BarChart:
    """Bars for ``categories`` (days, groups …): one bar per series side by side in each,
    heights on a common axis from 0 to a round top. ``text`` writes a value as people read
    it (an amount with its currency), ``titles`` names each series in the bars' tooltips.
    Negative values (a day of refunds) are drawn as nothing: the text still says them."""
    top = max([0, *(value for values in series for value in values)])
    step = nice_step(top)
    ticks_count = max(1, math.ceil(top / step)) if top else 1
    axis_top = step * ticks_count
    plot_height = HEIGHT - BOTTOM - TOP
    base = HEIGHT - BOTTOM
    slot = (WIDTH - LEFT) / max(1, len(categories))
    width = slot * 0.8 / max(1, len(series))
    bars = []
    for i, category in enumerate(categories):
        for s, values in enumerate(series):
            value = values[i]
            shown = text(value)
            height = float(max(value, 0)) / float(axis_top) * plot_height
            title = f"{category} {titles[s] if s < len(titles) else ''}".strip()
            bars.append(
                Bar(
                    x=round(LEFT + i * slot + slot * 0.1 + s * width, 2),
                    y=round(base - height, 2),
                    width=round(width, 2),
                    height=round(height, 2),
                    series=s,
                    text=shown,
                    title=f"{title}: {shown}",
                )
            )
    ticks = [
        Tick(y=round(base - k / ticks_count * plot_height, 2), text=text(step * k))
        for k in range(ticks_count + 1)
    ]
    every = math.ceil(len(categories) / MAX_LABELS) or 1
    labels = [
        Label(x=round(LEFT + (i + 0.5) * slot, 2), text=category)
        for i, category in enumerate(categories)
        if i % every == 0
    ]
    return BarChart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        base=base,
        bars=bars,
        ticks=ticks,
        labels=labels,
        values_shown=len(bars) <= MAX_VALUE_LABELS,
    )
