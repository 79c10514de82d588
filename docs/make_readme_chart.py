"""Draws docs/burndown.svg, the chart the README shows, from the demo site.

    DATABASE_URL=sqlite:///var/demo.sqlite3 DEBUG=1 python manage.py load_demo --today 2026-06-15
    DATABASE_URL=sqlite:///var/demo.sqlite3 DEBUG=1 python docs/make_readme_chart.py 2026-06-15

The figure is the one GET /api/v1/allocations/{code}/charts/burndown/ answers, built by the
same selectors and builder; this file only draws its line traces as a static SVG, since a
README cannot run plotly.js.
"""

import datetime as dt
import os
import sys
from pathlib import Path
from xml.sax.saxutils import escape

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

W, H = 820, 380
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 50, 80
DASHES = {"dot": "2,4", "dash": "8,5"}


def build_figure(today: dt.date) -> dict:
    import django

    django.setup()
    from allocations import charts, forecasts, selectors
    from allocations.models import Allocation

    # The allocation that burns fastest makes the most telling picture.
    allocation = (
        Allocation.objects.filter(status="ACTIVE", su_budget__gt=0, start__lte=today, end__gt=today)
        .order_by("-su_used")
        .select_related("cluster")
        .first()
    )
    daily = selectors.rollup_usage_by_day(allocation=allocation, start=allocation.start, end=today)
    forecast = forecasts.forecast(
        points=daily,
        start=allocation.start,
        end=allocation.end,
        budget=allocation.su_budget,
        remaining=allocation.su_remaining,
        today=today,
    )
    return charts.burndown_figure(
        title=f"{allocation.name} on {allocation.cluster.name}: SUs remaining",
        start=allocation.start,
        end=allocation.end,
        budget_steps=selectors.budget_diffs(allocation=allocation),
        daily_used=daily,
        forecast=forecast,
    )


def svg(figure: dict) -> str:
    x0, x1 = (dt.date.fromisoformat(d) for d in figure["layout"]["xaxis"]["range"])
    lines = [t for t in figure["data"] if t["type"] == "scatter"]
    ys = [y for t in lines for y in t["y"] if y is not None]
    top = max([*ys, 1]) * 1.08
    bottom = min([*ys, 0])

    def px(day: str) -> float:
        span = (x1 - x0).days or 1
        return LEFT + (dt.date.fromisoformat(day) - x0).days / span * (W - LEFT - RIGHT)

    def py(y: float) -> float:
        return TOP + (top - y) / (top - bottom) * (H - TOP - BOTTOM)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{LEFT}" y="28" font-size="16">'
        f"{escape(figure['layout']['title']['text'])}</text>",
    ]
    # The smallest of 1, 2, 5 x 10^k that leaves at most six gridlines.
    step = next(m * 10**k for k in range(12) for m in (1, 2, 5) if top / (m * 10**k) <= 6)
    tick = 0.0
    while tick <= top:
        y = py(tick)
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:,.0f}</text>')
        tick += step
    month = x0.replace(day=1)
    while month <= x1:
        if month >= x0:
            x = px(month.isoformat())
            out.append(
                f'<text x="{x:.1f}" y="{H - BOTTOM + 18}" text-anchor="middle">{month:%b %Y}</text>'
            )
        month = (month + dt.timedelta(days=32)).replace(day=1)
    out.append(f'<text x="16" y="{TOP - 12}">SUs</text>')
    for shape in figure["layout"].get("shapes", []):
        x = px(shape["x0"])
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{H - BOTTOM}" '
            f'stroke="{shape["line"]["color"]}" stroke-dasharray="2,4"/>'
        )
    for note in figure["layout"].get("annotations", []):
        x = px(note["x"])
        out.append(
            f'<text x="{x - 4:.1f}" y="{TOP + 14}" text-anchor="end">{escape(note["text"])}</text>'
        )
    legend_x = LEFT
    for trace in lines:
        points = " ".join(
            f"{px(x):.1f},{py(y):.1f}" for x, y in zip(trace["x"], trace["y"], strict=True)
        )
        style = trace["line"]
        dash = DASHES.get(style.get("dash", ""), "")
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<polyline points="{points}" fill="none" stroke="{style["color"]}" '
            f'stroke-width="{style.get("width", 2)}"{dash_attr}/>'
        )
        ly = H - 30
        out.append(
            f'<line x1="{legend_x}" x2="{legend_x + 24}" y1="{ly}" y2="{ly}" '
            f'stroke="{style["color"]}" stroke-width="3"{dash_attr}/>'
        )
        out.append(f'<text x="{legend_x + 30}" y="{ly + 4}">{escape(trace["name"])}</text>')
        legend_x += 60 + 7 * len(trace["name"])
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    today = dt.date.fromisoformat(sys.argv[1]) if len(sys.argv) > 1 else dt.date.today()
    target = Path(__file__).resolve().parent / "burndown.svg"
    target.write_text(svg(build_figure(today)))
    print(f"wrote {target}")
