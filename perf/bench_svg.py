"""Small inline-SVG charts for the benchmark report: no plotting library, no script, no
network, so the HTML file is complete on its own and renders anywhere."""

from __future__ import annotations

import math
from html import escape

WIDTH, HEIGHT = 640, 360
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 170, 36, 50
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39")
Point = tuple[float, float]


class _Axis:
    """Maps data values to pixels, linearly or on a log10 scale."""

    def __init__(self, low: float, high: float, pixels_from: float, pixels_to: float, *, log: bool) -> None:
        self.log = log
        if log:
            low, high = max(low, 1e-9), max(high, 1e-9)
            low, high = 10 ** math.floor(math.log10(low)), 10 ** math.ceil(math.log10(high))
        else:
            low, high = min(0.0, low), _nice_ceiling(high)
        if high <= low:
            high = low + 1
        self.low, self.high, self.pixels_from, self.pixels_to = low, high, pixels_from, pixels_to

    def _fraction(self, value: float) -> float:
        if self.log:
            value = max(value, self.low)
            return (math.log10(value) - math.log10(self.low)) / (math.log10(self.high) - math.log10(self.low))
        return (value - self.low) / (self.high - self.low)

    def pixel(self, value: float) -> float:
        return self.pixels_from + self._fraction(value) * (self.pixels_to - self.pixels_from)

    def ticks(self) -> list[float]:
        if self.log:
            decades = range(round(math.log10(self.low)), round(math.log10(self.high)) + 1)
            # Over a few decades only, 2 and 5 of each decade as well, or the axis says little.
            steps = (1, 2, 5) if len(decades) <= 4 else (1,)
            return [m * 10.0 ** e for e in decades for m in steps if m * 10.0 ** e <= self.high]
        step = _nice_ceiling((self.high - self.low) / 5)
        return [self.low + i * step for i in range(int((self.high - self.low) / step + 1e-9) + 1)]


def _nice_ceiling(value: float) -> float:
    """The smallest round number (a few steps per power of ten) that is >= value."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10) if m * power >= value * (1 - 1e-9))


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _frame(title: str, x_label: str, y_label: str, body: list[str], legend: list[tuple[str, str]]) -> str:
    plot_right = WIDTH - MARGIN_RIGHT
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
             f'height="{HEIGHT}" font-family="sans-serif" font-size="11" role="img">',
             f"<title>{escape(title)}</title>",
             f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-size="14">{escape(title)}</text>',
             f'<text x="{(MARGIN_LEFT + plot_right) / 2}" y="{HEIGHT - 10}" text-anchor="middle">{escape(x_label)}</text>',
             f'<text x="14" y="{(MARGIN_TOP + HEIGHT - MARGIN_BOTTOM) / 2}" text-anchor="middle" '
             f'transform="rotate(-90 14 {(MARGIN_TOP + HEIGHT - MARGIN_BOTTOM) / 2})">{escape(y_label)}</text>',
             *body]
    for index, (name, colour) in enumerate(legend):
        y = MARGIN_TOP + 8 + index * 16
        parts.append(f'<rect x="{plot_right + 12}" y="{y - 8}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{plot_right + 28}" y="{y + 1}">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _axes(x_axis: _Axis | None, y_axis: _Axis, x_categories: list[tuple[str, float]] | None = None) -> list[str]:
    top, bottom = MARGIN_TOP, HEIGHT - MARGIN_BOTTOM
    left, right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    parts = [f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#999"/>']
    for tick in y_axis.ticks():
        y = y_axis.pixel(tick)
        parts.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(tick)}</text>')
    ticks = x_categories or [(_label(t), x_axis.pixel(t)) for t in x_axis.ticks()]
    for text, x in ticks:
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}" stroke="#999"/>'
                     f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{escape(text)}</text>')
    return parts


def line_chart(title: str, series: dict[str, list[Point]], *, x_label: str, y_label: str, log_x: bool = False,
               log_y: bool = False, diagonal: bool = False) -> str:
    """One line with dots per series; `diagonal` draws y = x dashed (e.g. carried = offered)."""
    points = [p for line in series.values() for p in line]
    if not points:
        return _frame(title, x_label, y_label, ['<text x="200" y="180">no data</text>'], [])
    x_axis = _Axis(min(x for x, _ in points), max(x for x, _ in points), MARGIN_LEFT, WIDTH - MARGIN_RIGHT, log=log_x)
    y_high = max(max(y for _, y in points), x_axis.high if diagonal else 0)
    y_axis = _Axis(min(y for _, y in points), y_high, HEIGHT - MARGIN_BOTTOM, MARGIN_TOP, log=log_y)
    body = _axes(x_axis, y_axis)
    if diagonal:
        body.append(f'<line x1="{x_axis.pixel(x_axis.low):.1f}" y1="{y_axis.pixel(x_axis.low):.1f}" '
                    f'x2="{x_axis.pixel(x_axis.high):.1f}" y2="{y_axis.pixel(x_axis.high):.1f}" '
                    'stroke="#aaa" stroke-dasharray="4 4"/>')
    legend = []
    for index, (name, line) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        legend.append((name, colour))
        path = " ".join(f"{x_axis.pixel(x):.1f},{y_axis.pixel(y):.1f}" for x, y in line)
        body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        if len(line) <= 12:
            body += [f'<circle cx="{x_axis.pixel(x):.1f}" cy="{y_axis.pixel(y):.1f}" r="3" fill="{colour}"/>'
                     for x, y in line]
    return _frame(title, x_label, y_label, body, legend)


def stacked_bars(title: str, categories: list[str], segments: dict[str, list[float]], *, x_label: str,
                 y_label: str) -> str:
    """One bar per category, stacked from `segments` (name -> one value per category)."""
    totals = [sum(values[i] for values in segments.values()) for i in range(len(categories))]
    if not categories or not any(totals):
        return _frame(title, x_label, y_label, ['<text x="200" y="180">no data</text>'], [])
    y_axis = _Axis(0.0, max(totals), HEIGHT - MARGIN_BOTTOM, MARGIN_TOP, log=False)
    slot = (WIDTH - MARGIN_RIGHT - MARGIN_LEFT) / len(categories)
    centres = [MARGIN_LEFT + slot * (i + 0.5) for i in range(len(categories))]
    body = _axes(None, y_axis, list(zip(categories, centres)))
    legend = []
    base = [0.0] * len(categories)
    for index, (name, values) in enumerate(segments.items()):
        colour = COLOURS[index % len(COLOURS)]
        legend.append((name, colour))
        for i, value in enumerate(values):
            if value <= 0:
                continue
            y_top, y_bottom = y_axis.pixel(base[i] + value), y_axis.pixel(base[i])
            body.append(f'<rect x="{centres[i] - slot * 0.35:.1f}" y="{y_top:.1f}" width="{slot * 0.7:.1f}" '
                        f'height="{y_bottom - y_top:.1f}" fill="{colour}"><title>{escape(name)}: '
                        f'{value:.3g}</title></rect>')
            base[i] += value
    return _frame(title, x_label, y_label, body, legend)
