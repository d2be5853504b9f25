"""The report: one self-contained HTML file a person can open or mail.

Outcome metrics, the funnel, each rollout's completion per arm over time with
95% bands and its stages marked, time to resolution as Kaplan-Meier curves,
the channel mix and cost per resolution, and every decision with who took it
and why. The stylesheet is inside the file and the charts are inline SVG: it
needs no server, no script and no network to read.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

from markupsafe import Markup

from closeloop.app import App
from closeloop.app.overview import overview
from closeloop.web import charts
from closeloop.web.pages import pages, stylesheet


def _days(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def rollout_charts(time: dict[str, Any]) -> dict[str, Markup]:
    """A rollout's charts from `Rollouts.over_time`: completion and resolution per cohort
    per day (stages marked), and the Kaplan-Meier curves."""
    series = time["series"]
    days = sorted({p["day"] for points in series.values() for p in points})
    labels = _days(days[0], days[-1]) if days else []
    index = {day: i for i, day in enumerate(labels)}
    markers = [
        (index[s["at"][:10]], f"{s['action']} {s['stage']}")
        for s in time["stages"]
        if s["at"][:10] in index and s["action"] in ("promote", "halt")
    ]
    enrolled = {c: points for c, points in series.items() if c not in ("outside", "ineligible")}
    shown = sorted(set(enrolled) | set(time["curves"]), key=lambda c: (c != "control", c))
    palette = charts.colours(shown)  # a cohort has one colour on every chart

    def drawn(metric: str, cohorts: dict[str, list[dict[str, Any]]], title: str) -> Markup:
        return charts.lines(
            title,
            labels,
            {
                cohort: [
                    (index[p["day"]], p[metric]["rate"], p[metric]["low"], p[metric]["high"])
                    for p in points
                ]
                for cohort, points in cohorts.items()
            },
            markers=markers,
            palette=palette,
        )

    arms = {c: p for c, p in enrolled.items() if c != "control"}
    return {
        "completion": drawn("completion", arms, f"Completion per arm, rollout {time['rollout']}"),
        "resolution": drawn(
            "resolution", enrolled, f"Resolution per cohort, rollout {time['rollout']}"
        ),
        "time": charts.steps(
            f"Share resolved by time since opening, rollout {time['rollout']}",
            {
                c: (k["hours"], k["unresolved"])
                for c, k in time["curves"].items()
                if c not in ("outside", "ineligible")
            },
            palette=palette,
        ),
    }


def report_context(app: App) -> dict[str, Any]:
    """What the report shows, read from the database now."""
    state = overview(app)
    with app.store.read() as tx:
        rows = tx.all_rollouts()
    rollouts = []
    for row in rows:
        name = row["name"]
        rollouts.append(
            {
                "r": app.rollouts.report(name),
                "drawn": rollout_charts(app.rollouts.over_time(name)),
                "stages": app.rollouts.by_stage(name),
            }
        )
    sent = {name: c["sent"] for name, c in state["channels"].items()}
    return {
        "generated_at": app.clock.now(),
        "program": app.settings.brand_name or app.settings.program_name,
        "state": state,
        "rollouts": rollouts,
        "channel_mix": charts.bars(
            "Messages sent by channel", sorted(sent.items(), key=lambda kv: -kv[1])
        ),
        "statuses": charts.bars(
            "Cases by status", sorted(state["cases"].items(), key=lambda kv: -kv[1])
        ),
    }


def render_report(app: App, *, nonce: str | None = None) -> str:
    """The report's HTML; `nonce` marks its inline stylesheet for a page's CSP."""
    return pages.get_template("report.html").render(
        css=stylesheet(), nonce=nonce, **report_context(app)
    )


def write_report(app: App, out: Path) -> Path:
    """Write the report to `out` (a file) and return its path."""
    html = render_report(app)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out
