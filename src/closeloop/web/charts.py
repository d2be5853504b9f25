"""Charts as inline SVG, drawn on the server from the numbers the page shows.

The consoles and the report use the same three shapes: lines over days with
their confidence bands (completion per arm), step curves (time to resolution,
Kaplan-Meier), and horizontal bars (the funnel, the channel mix). Every chart
is an ``<svg role="img">`` named by its title and described by a sentence;
the numbers are also in a table beside it, for screen readers and for people
who want the figures. No script and no third party: a report mailed as one
file draws the same charts offline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from itertools import count

from markupsafe import Markup

# Okabe and Ito's palette, told apart with any colour vision.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 16, 56
_ids = count(1)


def _text(x: float, y: float, text: str, size: int = 11, anchor: str = "start") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
        f'fill="#1a1a1a">{escape(text)}</text>'
    )


def _rule(x1: float, x2: float, y1: float, y2: float, colour: str, dash: str = "") -> str:
    dashes = f' stroke-dasharray="{dash}"' if dash else ""
    return (
        f'<line x1="{x1:.1f}" x2="{x2:.1f}" y1="{y1:.1f}" y2="{y2:.1f}" stroke="{colour}"{dashes}/>'
    )


def _frame(title: str, desc: str, body: list[str], height: int = HEIGHT) -> Markup:
    n = next(_ids)
    # Every text that comes from data went through `escape`; numbers are formatted here.
    return Markup(  # noqa: S704
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-labelledby="chart-t{n} chart-d{n}" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="chart-t{n}">{escape(title)}</title>'
        f'<desc id="chart-d{n}">{escape(desc)}</desc>' + "".join(body) + "</svg>"
    )


def _polyline(points: str, colour: str) -> str:
    return f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>'


def colours(names: Sequence[str]) -> dict[str, str]:
    """One colour per name, in order: give every chart of a page the same mapping so a
    cohort keeps its colour from one chart to the next."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _legend(names: Sequence[str], y: float, palette: Mapping[str, str]) -> list[str]:
    out, x = [], LEFT
    for name in names:
        colour = palette[name]
        out.append(f'<rect x="{x}" y="{y - 9}" width="12" height="12" fill="{colour}"/>')
        out.append(_text(x + 16, y + 1, name, 12))
        x += 28 + 7 * len(name)
    return out


def _y_axis(top: float, bottom: float, y_max: float, percent: bool) -> list[str]:
    out = []
    for i in range(5):
        value = y_max * i / 4
        y = bottom - (bottom - top) * i / 4
        label = f"{value:.0%}" if percent else f"{value:g}"
        out.append(_rule(LEFT, WIDTH - RIGHT, y, y, "#d0d0d0"))
        out.append(_text(LEFT - 6, y + 4, label, anchor="end"))
    return out


def lines(
    title: str,
    x_labels: Sequence[str],
    series: Mapping[str, Sequence[tuple[int, float, float, float]]],
    *,
    markers: Sequence[tuple[int, str]] = (),
    palette: Mapping[str, str] | None = None,
) -> Markup:
    """Rates (0..1) over `x_labels`: each series' points are (x index, rate, low, high); the
    band between low and high is drawn under the line. `markers` are vertical rules (a
    stage began) at an x index, with a label."""
    top, bottom = TOP, HEIGHT - BOTTOM
    span = max(len(x_labels) - 1, 1)
    highest = max((p[3] for points in series.values() for p in points), default=1.0)
    y_max = min(1.0, max(0.25, round(highest + 0.05, 1)))

    def x(i: float) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * i / span

    def y(v: float) -> float:
        return bottom - (bottom - top) * min(v, y_max) / y_max

    body = _y_axis(top, bottom, y_max, percent=True)
    step = max(1, len(x_labels) // 8)
    for i, label in enumerate(x_labels):
        if i % step == 0:
            body.append(_text(x(i), bottom + 16, label[5:], anchor="middle"))
    for i, label in markers:
        body.append(_rule(x(i), x(i), top, bottom, "#555", "4 3"))
        body.append(_text(x(i) + 3, top + 10, label, 10))
    palette = palette or colours(list(series))
    for name, points in series.items():
        colour = palette[name]
        if not points:
            continue
        band = [f"{x(i):.1f},{y(hi):.1f}" for i, _, _, hi in points]
        band += [f"{x(i):.1f},{y(lo):.1f}" for i, _, lo, _ in reversed(points)]
        body.append(f'<polygon points="{" ".join(band)}" fill="{colour}" fill-opacity="0.15"/>')
        path = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v, _, _ in points)
        body.append(_polyline(path, colour))
        for i, v, _, _ in points:
            body.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"/>')
    body += _legend(list(series), HEIGHT - 12, palette)
    last = {name: points[-1][1] for name, points in series.items() if points}
    desc = "; ".join(f"{name} {rate:.1%} on the last day" for name, rate in last.items())
    return _frame(title, desc or "no data yet", body)


def steps(
    title: str,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    horizon: float = 168.0,
    palette: Mapping[str, str] | None = None,
) -> Markup:
    """Kaplan-Meier curves drawn as the share resolved (1 - survival) against hours, up to
    `horizon` hours; each curve is (times, share still unresolved after each time)."""
    top, bottom = TOP, HEIGHT - BOTTOM

    def x(t: float) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * min(t, horizon) / horizon

    def y(v: float) -> float:
        return bottom - (bottom - top) * v

    body = _y_axis(top, bottom, 1.0, percent=True)
    for day in range(0, int(horizon // 24) + 1):
        body.append(_text(x(day * 24), bottom + 16, f"{day}d", anchor="middle"))
    described = []
    palette = palette or colours(list(curves))
    for name, (times, unresolved) in curves.items():
        colour = palette[name]
        points, level = [f"{x(0):.1f},{y(0):.1f}"], 0.0
        for t, s in zip(times, unresolved, strict=True):
            if t > horizon:
                break
            points.append(f"{x(t):.1f},{y(level):.1f}")
            level = 1 - s
            points.append(f"{x(t):.1f},{y(level):.1f}")
        points.append(f"{x(horizon):.1f},{y(level):.1f}")
        body.append(_polyline(" ".join(points), colour))
        described.append(f"{name} {level:.0%} resolved by {horizon / 24:g} days")
    body += _legend(list(curves), HEIGHT - 12, palette)
    return _frame(title, "; ".join(described) or "no data yet", body)


def bars(title: str, items: Sequence[tuple[str, float]], *, percent: bool = False) -> Markup:
    """Horizontal bars, one per (label, value), longest first as given."""
    row, label_width = 26, 150
    height = TOP + row * max(len(items), 1) + 8
    highest = max((v for _, v in items), default=0) or 1
    body = []
    for i, (label, value) in enumerate(items):
        y = TOP + i * row
        w = (WIDTH - label_width - 90) * value / highest
        shown = f"{value:.1%}" if percent else f"{value:,.0f}"
        body.append(_text(label_width - 8, y + 15, label, 12, "end"))
        body.append(
            f'<rect x="{label_width}" y="{y + 3}" width="{w:.1f}" height="16" fill="{PALETTE[0]}"/>'
        )
        body.append(_text(label_width + w + 6, y + 15, shown, 12))
    desc = "; ".join(f"{label}: {v:.1%}" if percent else f"{label}: {v:,.0f}" for label, v in items)
    return _frame(title, desc or "no data yet", body, height)
