"""Figure builders: plain rows in, a plotly figure (a JSON-ready dict) out.

Pure functions: no database, no request, no plotly import at run time (the tests check
every figure against plotly's schema). Amounts arrive as Decimal and are drawn as
numbers; the exact values stay in the API's balances, a chart only has to look right.
"""

import datetime as dt
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal

from allocations.forecasts import Forecast

ONE_DAY = dt.timedelta(days=1)
# Longer ranges are drawn by week, then by month, so a chart has at most a few hundred bars.
DAILY_UP_TO_DAYS = 92
WEEKLY_UP_TO_DAYS = 2 * 366

COLORS = ["#1f6feb", "#d9822b", "#2da44e", "#a371f7", "#cf222e", "#0a9396", "#9a6700"]
OTHERS = "Other members"


def _num(value: Decimal | int | None) -> float | None:
    return None if value is None else float(value)


def _layout(title: str, **extra) -> dict:
    layout = {
        "title": {"text": title},
        "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        "hovermode": "x unified",
        "legend": {"orientation": "h", "y": -0.2},
        "yaxis": {"title": {"text": "SUs"}, "rangemode": "tozero"},
    }
    layout.update(extra)
    return layout


def bucket_for(start: dt.date, end: dt.date) -> str:
    days = (end - start).days + 1
    if days <= DAILY_UP_TO_DAYS:
        return "day"
    return "week" if days <= WEEKLY_UP_TO_DAYS else "month"


def bucket_start(day: dt.date, bucket: str) -> dt.date:
    if bucket == "week":
        return day - dt.timedelta(days=day.weekday())
    if bucket == "month":
        return day.replace(day=1)
    return day


def month_starts(start: dt.date, end: dt.date) -> list[dt.date]:
    months, month = [], start.replace(day=1)
    while month <= end:
        months.append(month)
        month = (month + dt.timedelta(days=32)).replace(day=1)
    return months


def burndown_figure(
    *,
    title: str,
    start: dt.date,
    end: dt.date,
    budget_steps: Sequence[tuple[dt.date, Decimal]],
    daily_used: Iterable[tuple[dt.date, Decimal]],
    forecast: Forecast,
) -> dict:
    """Remaining SUs day by day, the ideal linear burn from the budget to zero over the
    allocation's dates, and the projection at the recent burn rate to exhaustion.

    budget_steps: (day, budget after that day's diffs), in time order, from the diffs.
    """
    steps = list(budget_steps)
    # The grant that opens an allocation is approved when an admin gets to it, often
    # after the start date; its budget is what the allocation started with.
    first = next((i for i, (_, amount) in enumerate(steps) if amount > 0), None)
    if first is not None:
        steps = [(min(steps[first][0], start), steps[first][1]), *steps[first + 1 :]]
    used_on: dict[dt.date, Decimal] = defaultdict(Decimal)
    for day, su in daily_used:
        used_on[day] += su
    budget_on = dict(steps)  # the last step of a day wins
    budget = steps[-1][1] if steps else Decimal(0)
    last = min(forecast.today, end)
    days, remaining = [], []
    current_budget = Decimal(0)
    for day, amount in steps:
        if day < start:
            current_budget = amount
    used = sum((su for day, su in used_on.items() if day < start), Decimal(0))
    zero = Decimal(0)
    day = start
    while day <= last:
        current_budget = budget_on.get(day, current_budget)
        used += used_on.get(day, zero)
        days.append(day.isoformat())
        # Exact to here; a chart point only has to look right, so it leaves as a float.
        remaining.append(float(current_budget - used))
        day += ONE_DAY
    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": "Remaining",
            "x": days,
            "y": remaining,
            "line": {"color": COLORS[0], "width": 3},
        },
        {
            "type": "scatter",
            "mode": "lines",
            "name": "Ideal linear burn",
            "x": [start.isoformat(), end.isoformat()],
            "y": [_num(budget), 0],
            "line": {"color": "#8c959f", "dash": "dot"},
        },
    ]
    shapes, annotations = [], []
    if days and start <= forecast.today <= end:
        projected_end = forecast.exhaustion if forecast.exhaustion else end
        projected_end = min(projected_end, end)
        rate = forecast.burn_rate
        left = forecast.remaining - rate * (projected_end - forecast.today).days
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"Projected at {rate} SU/day",
                "x": [forecast.today.isoformat(), projected_end.isoformat()],
                "y": [_num(forecast.remaining), _num(max(left, Decimal(0)))],
                "line": {"color": COLORS[1], "dash": "dash"},
            }
        )
    if forecast.exhaustion and start <= forecast.exhaustion <= end:
        when = forecast.exhaustion.isoformat()
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": when,
                "x1": when,
                "y0": 0,
                "y1": 1,
                "line": {"color": COLORS[4], "dash": "dot"},
            }
        )
        annotations.append(
            {
                "x": when,
                "y": 1,
                "xref": "x",
                "yref": "paper",
                "text": f"Projected exhaustion {when}",
                "showarrow": False,
                "yanchor": "bottom",
            }
        )
    layout = _layout(
        title,
        xaxis={"type": "date", "range": [start.isoformat(), end.isoformat()]},
        shapes=shapes,
        annotations=annotations,
    )
    return {"data": data, "layout": layout}


def stacked_usage_figure(
    *,
    title: str,
    rows: Iterable[tuple[str, dt.date, Decimal]],
    start: dt.date,
    end: dt.date,
    bucket: str | None = None,
) -> dict:
    """Stacked bars of SUs per label (a member, a resource, a project) per day, week or
    month; rows are (label, day, SUs), where the day may already be its period's first
    day (a reader that sums by period, for fewer rows). The biggest series is drawn at
    the bottom."""
    bucket = bucket or bucket_for(start, end)
    # A period that began before `start` still shows the days of it that are in range.
    first = bucket_start(start, bucket)
    totals: dict[str, dict[dt.date, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    period_of: dict[dt.date, dt.date] = {}  # each day's period, worked out once
    for label, day, su in rows:
        if first <= day <= end:
            period = period_of.get(day)
            if period is None:
                period = period_of[day] = bucket_start(day, bucket)
            totals[label][period] += su
    periods = sorted({p for series in totals.values() for p in series})
    x = [p.isoformat() for p in periods]
    order = sorted(totals, key=lambda label: (-sum(totals[label].values()), label))
    # "Other members" stands for people the viewer may not see one by one: drawn last.
    order.sort(key=lambda label: label == OTHERS)
    data = [
        {
            "type": "bar",
            "name": label,
            "x": list(x),
            "y": [float(totals[label].get(p, 0)) for p in periods],
            "marker": {"color": COLORS[i % len(COLORS)]},
        }
        for i, label in enumerate(order)
    ]
    layout = _layout(
        f"{title} (per {bucket})",
        barmode="stack",
        xaxis={"type": "date", "range": [start.isoformat(), (end + ONE_DAY).isoformat()]},
    )
    return {"data": data, "layout": layout}


def project_overview_figure(
    *, title: str, allocations: Sequence[tuple[str, Decimal, Decimal, Decimal]]
) -> dict:
    """One horizontal bar per allocation: used, held and remaining SUs of its budget.
    allocations: (label, budget, used, held)."""
    labels = [label for label, *_ in allocations]
    used = [_num(u) for _, _, u, _ in allocations]
    held = [_num(h) for _, _, _, h in allocations]
    remaining = [_num(max(b - u - h, Decimal(0))) for _, b, u, h in allocations]
    overdrawn = [_num(max(u + h - b, Decimal(0))) for _, b, u, h in allocations]
    data = [
        {
            "type": "bar",
            "orientation": "h",
            "name": name,
            "y": labels,
            "x": values,
            "marker": {"color": color},
        }
        for name, values, color in (
            ("Used", used, COLORS[0]),
            ("Held for running jobs", held, COLORS[1]),
            ("Remaining", remaining, "#d0d7de"),
            ("Overdrawn", overdrawn, COLORS[4]),
        )
        if any(values)
    ]
    layout = _layout(
        title,
        barmode="stack",
        xaxis={"title": {"text": "SUs"}, "rangemode": "tozero"},
        yaxis={"automargin": True, "autorange": "reversed"},
        hovermode="y unified",
    )
    return {"data": data, "layout": layout}


def prorate_by_month(
    allocations: Iterable[tuple[dt.date, dt.date, Decimal]], months: Sequence[dt.date]
) -> dict[dt.date, Decimal]:
    """SUs committed in each month: every allocation's budget spread evenly over its
    days (start to end inclusive), so one of 1,200 SUs for a year commits ~100 a month."""
    committed = {month: Decimal(0) for month in months}
    for start, end, budget in allocations:
        total_days = (end - start).days + 1
        if total_days <= 0 or budget <= 0:
            continue
        for month in months:
            next_month = (month + dt.timedelta(days=32)).replace(day=1)
            first, last = max(start, month), min(end, next_month - ONE_DAY)
            if first <= last:
                committed[month] += budget * ((last - first).days + 1) / total_days
    return {month: amount.quantize(Decimal(1)) for month, amount in committed.items()}


def commitment_figure(
    *,
    title: str,
    committed: dict[dt.date, Decimal],
    used: dict[dt.date, Decimal],
    capacity: Decimal | None,
) -> dict:
    """Per month: SUs committed by allocations, SUs used, and the cluster's capacity."""
    months = sorted(committed)
    x = [m.isoformat() for m in months]
    data = [
        {
            "type": "bar",
            "name": "Committed",
            "x": x,
            "y": [_num(committed[m]) for m in months],
            "marker": {"color": COLORS[0]},
        },
        {
            "type": "bar",
            "name": "Used",
            "x": x,
            "y": [_num(used.get(m, Decimal(0))) for m in months],
            "marker": {"color": COLORS[2]},
        },
    ]
    if capacity is not None:
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "Capacity",
                "x": x,
                "y": [_num(capacity)] * len(x),
                "line": {"color": COLORS[4], "dash": "dash", "shape": "hv"},
            }
        )
    layout = _layout(title, barmode="group", xaxis={"type": "date", "dtick": "M1"})
    return {"data": data, "layout": layout}


def decision_time_figure(*, title: str, decisions: Iterable[tuple[str, Decimal]]) -> dict:
    """A histogram of days from request to decision, one series per outcome.
    decisions: (outcome, days)."""
    by_outcome: dict[str, list[float]] = defaultdict(list)
    for outcome, days in decisions:
        by_outcome[outcome].append(_num(days))
    all_days = [d for values in by_outcome.values() for d in values]
    data = [
        {
            "type": "histogram",
            "name": outcome.capitalize(),
            "x": values,
            "marker": {"color": COLORS[i % len(COLORS)]},
            "xbins": {"size": 1},
        }
        for i, (outcome, values) in enumerate(sorted(by_outcome.items()))
    ]
    annotations = []
    if all_days:
        median = statistics.median(all_days)
        annotations.append(
            {
                "xref": "paper",
                "yref": "paper",
                "x": 1,
                "y": 1,
                "showarrow": False,
                "text": f"{len(all_days)} decisions, median {median:.1f} days",
            }
        )
    layout = _layout(
        title,
        barmode="stack",
        xaxis={"title": {"text": "Days from request to decision"}, "rangemode": "tozero"},
        yaxis={"title": {"text": "Requests"}},
        annotations=annotations,
        hovermode="closest",
    )
    return {"data": data, "layout": layout}
