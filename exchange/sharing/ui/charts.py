"""Server-side SVG charts for the web page and the HTML report: linear axes, no JavaScript.

The palette cannot be read as TLP (no red, amber or green): decisions are blue
(shared), light blue (redacted) and dark grey (withheld), distinguishable by
lightness alone, so they survive colour blindness and grey-scale printing.
Every chart is drawn next to a table with its numbers (the templates' job).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

#: (key, label, fill) per decision
DECISION_SERIES = (("share", "shared", "#0b5cad"), ("redact", "redacted", "#7fb8e6"), ("withhold", "withheld", "#3d3d3d"))
TIMELINE_SERIES = (
    ("released", "released to partners", "#0b5cad"), ("arrived", "arrived from partners", "#6b4c9a"),
    ("refused on arrival", "refused on arrival", "#3d3d3d"), ("withdrawn", "withdrawn", "#a6a6a6"),
)
_FONT = 'font-family="system-ui,sans-serif" font-size="12"'


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Tick values from 0 to at least ``top`` on a linear axis, steps of 1, 2 or 5 times a power of ten."""
    if top <= 0:
        return [0, 1]
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    step = max(step, 1)
    n = math.ceil(top / step)
    return [i * step for i in range(n + 1)]


def _fmt(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() else f"{v:,.1f}"


def _legend(series: Sequence[tuple[str, str, str]], x: float, y: float) -> list[str]:
    out = []
    for _key, label, fill in series:
        out.append(f'<rect x="{x:.0f}" y="{y - 10:.0f}" width="12" height="12" fill="{fill}" stroke="#000" stroke-width="0.5"/>')
        out.append(f'<text x="{x + 16:.0f}" y="{y:.0f}" {_FONT}>{escape(label)}</text>')
        x += 24 + 7.2 * len(label)
    return out


def stacked_bars(rows: Sequence[tuple[str, dict[str, int]]], series: Sequence[tuple[str, str, str]] = DECISION_SERIES,
                 *, title: str, unit: str = "object versions", width: int = 720) -> Markup:
    """Horizontal stacked bars, one per row, on a linear axis starting at 0."""
    label_w = min(260, 16 + 7 * max((len(r[0]) for r in rows), default=4))
    bar_h, gap, top_pad = 18, 8, 44
    plot_w = width - label_w - 30
    totals = [sum(v.get(k, 0) for k, _l, _f in series) for _r, v in rows]
    ticks = nice_ticks(max(totals, default=0))
    scale = plot_w / ticks[-1]
    height = top_pad + len(rows) * (bar_h + gap) + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text x="0" y="14" {_FONT} font-weight="bold">{escape(title)}</text>']
    parts += _legend(series, label_w, 34)
    axis_y = top_pad + len(rows) * (bar_h + gap)
    for t in ticks:
        x = label_w + t * scale
        parts.append(f'<line x1="{x:.1f}" y1="{top_pad - 4}" x2="{x:.1f}" y2="{axis_y}" stroke="#ccc" stroke-width="1"/>')
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle" {_FONT}>{_fmt(t)}</text>')
    parts.append(f'<text x="{label_w + plot_w / 2:.0f}" y="{axis_y + 32}" text-anchor="middle" {_FONT}>{escape(unit)} (linear scale)</text>')
    for i, (label, values) in enumerate(rows):
        y = top_pad + i * (bar_h + gap)
        parts.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" {_FONT}>{escape(label[:40])}</text>')
        x = label_w
        for key, name, fill in series:
            n = values.get(key, 0)
            if n:
                w = n * scale
                parts.append(f'<rect x="{x:.1f}" y="{y}" width="{max(w, 1):.1f}" height="{bar_h}" fill="{fill}">'
                             f'<title>{escape(label)}: {n} {escape(name)}</title></rect>')
                x += w
    parts.append("</svg>")
    return Markup("".join(parts))


def columns(buckets: Sequence[tuple[str, dict[str, int]]], series: Sequence[tuple[str, str, str]] = TIMELINE_SERIES,
            *, title: str, unit: str = "object versions", width: int = 720, height: int = 240) -> Markup:
    """Grouped columns over time (one group per bucket), linear axis from 0."""
    present = [s for s in series if any(v.get(s[0], 0) for _b, v in buckets)] or list(series[:1])
    left, top_pad, bottom = 56, 44, 44
    plot_w, plot_h = width - left - 10, height - top_pad - bottom
    ticks = nice_ticks(max((v.get(k, 0) for _b, v in buckets for k, _l, _f in present), default=0))
    scale = plot_h / ticks[-1]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text x="0" y="14" {_FONT} font-weight="bold">{escape(title)}</text>']
    parts += _legend(present, left, 34)
    base = top_pad + plot_h
    for t in ticks:
        y = base - t * scale
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#ccc" stroke-width="1"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>{_fmt(t)}</text>')
    n = max(len(buckets), 1)
    group = plot_w / n
    bar = max(group * 0.8 / len(present), 0.5)
    label_every = max(1, math.ceil(n / 8))
    for i, (label, values) in enumerate(buckets):
        gx = left + i * group + group * 0.1
        for j, (key, name, fill) in enumerate(present):
            v = values.get(key, 0)
            if v:
                h = v * scale
                parts.append(f'<rect x="{gx + j * bar:.1f}" y="{base - h:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{fill}">'
                             f'<title>{escape(label)}: {v} {escape(name)}</title></rect>')
        if i % label_every == 0:
            parts.append(f'<text x="{gx:.1f}" y="{base + 14}" {_FONT}>{escape(label)}</text>')
    parts.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#000"/>')
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{base + 34}" text-anchor="middle" {_FONT}>{escape(unit)} per bucket (linear scale)</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
