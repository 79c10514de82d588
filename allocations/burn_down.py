"""Plotly figures as plain dicts, built from rows the selectors return.

No database or request access here, so each builder is tested on its own
(tests/allocations/test_burn_down.py). SU values stay Decimal: the template's json_script
writes them as strings, which plotly.js reads as numbers, so no float ever rounds them.
"""

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

BURN_RATE_DAYS = 30


@dataclass(frozen=True)
class BurnDown:
    figure: dict
    remaining: Decimal
    # SUs per day over the last BURN_RATE_DAYS days, and when the budget runs out at it.
    burn_rate: Decimal
    exhausted_on: dt.date | None


def _budget_on(steps: list[tuple[dt.date, Decimal]], day: dt.date) -> Decimal:
    budget = Decimal(0)
    for when, after in steps:
        if when > day:
            break
        budget = after
    return budget


def burn_down(
    *,
    start: dt.date,
    end: dt.date,
    today: dt.date,
    budget_steps: Iterable[tuple[dt.date, Decimal]],
    daily_usage: Iterable[tuple[dt.date, Decimal]],
) -> BurnDown:
    """Remaining SUs day by day from the allocation's start to today, the budget as a
    step line (every diff), and a projection at the recent burn rate until the end date.

    budget_steps: (day, budget after that day's diffs), in time order.
    daily_usage: (day, SUs charged that day, adjustments included), any order.
    """
    steps = sorted(budget_steps)
    used_by_day: dict[dt.date, Decimal] = {}
    for day, su in daily_usage:
        used_by_day[day] = used_by_day.get(day, Decimal(0)) + su
    last = min(max(today, start), end)
    first = min([start, *used_by_day.keys()]) if used_by_day else start

    days, remaining_series, budget_series = [], [], []
    used = Decimal(0)
    day = first
    while day <= last:
        used += used_by_day.get(day, Decimal(0))
        budget = _budget_on(steps, day)
        days.append(day)
        budget_series.append(budget)
        remaining_series.append(budget - used)
        day += dt.timedelta(days=1)
    # Usage reported after the window (late importers) still counts toward today's balance.
    used += sum((su for d, su in used_by_day.items() if d > last), Decimal(0))
    remaining = _budget_on(steps, last) - used if days else Decimal(0)

    window_start = last - dt.timedelta(days=BURN_RATE_DAYS - 1)
    recent = sum((su for d, su in used_by_day.items() if window_start <= d <= last), Decimal(0))
    burn_rate = (recent / BURN_RATE_DAYS).quantize(Decimal("0.0001"))

    exhausted_on = None
    projection_x: list[dt.date] = []
    projection_y: list[Decimal] = []
    if burn_rate > 0 and remaining > 0:
        days_left = int(remaining / burn_rate)
        exhausted_on = last + dt.timedelta(days=days_left)
        stop = min(exhausted_on, end)
        projection_x = [last, stop]
        projection_y = [remaining, remaining - burn_rate * (stop - last).days]

    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": "Budget",
            "x": days,
            "y": budget_series,
            "line": {"shape": "hv", "color": "#8a94a6", "dash": "dot"},
        },
        {
            "type": "scatter",
            "mode": "lines",
            "name": "Remaining",
            "x": days,
            "y": remaining_series,
            "line": {"color": "#1f5fbf", "width": 2},
            "fill": "tozeroy",
            "fillcolor": "rgba(31,95,191,0.08)",
        },
    ]
    if projection_x:
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"Projected ({BURN_RATE_DAYS}-day rate)",
                "x": projection_x,
                "y": projection_y,
                "line": {"color": "#b42318", "dash": "dash"},
            }
        )
    layout = {
        "margin": {"l": 60, "r": 20, "t": 10, "b": 40},
        "xaxis": {"range": [start, end], "type": "date"},
        "yaxis": {"title": {"text": "SU"}, "rangemode": "tozero"},
        "legend": {"orientation": "h", "y": -0.15},
        "hovermode": "x unified",
    }
    return BurnDown(
        figure={"data": data, "layout": layout},
        remaining=remaining,
        burn_rate=burn_rate,
        exhausted_on=exhausted_on,
    )
