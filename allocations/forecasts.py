"""Forecasts from an allocation's daily usage: pure functions, no database.

- Burn rate: the mean SUs per day over the last RATE_WINDOW_DAYS days up to today
  (fewer when the allocation started more recently), idle days included.
- Projected exhaustion: the day the remaining SUs reach zero at that rate.
- Pattern, over the same window (at least MIN_PATTERN_DAYS days of history):
  idle       no usage at all;
  growing    the least-squares line through the daily amounts rises by at least
             TREND_SHARE (50%) of the mean over the window;
  declining  it falls by at least that much;
  bursty     otherwise, if the daily amounts' standard deviation is at least
             BURSTY_CV (1.0) times their mean: most days idle, a few heavy;
  steady     anything else;
  new        fewer than MIN_PATTERN_DAYS days of history.
- Recommendation: request a supplement REVIEW_LEAD_DAYS before the projected
  exhaustion when that falls before the end date; say how many SUs will likely go unused
  when that is more than UNUSED_SHARE of the budget.

Amounts stay Decimal; only the standard deviation needs a square root, taken by Decimal.
"""

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from allocations.conversion import SU_QUANTUM

RATE_WINDOW_DAYS = 28
MIN_PATTERN_DAYS = 7
TREND_SHARE = Decimal("0.5")
BURSTY_CV = Decimal("1.0")
REVIEW_LEAD_DAYS = 14
UNUSED_SHARE = Decimal("0.10")

IDLE, GROWING, DECLINING, BURSTY, STEADY, NEW = (
    "idle",
    "growing",
    "declining",
    "bursty",
    "steady",
    "new",
)
ONE_DAY = dt.timedelta(days=1)
WHOLE = Decimal(1)


def dense_series(
    points: Iterable[tuple[dt.date, Decimal]], start: dt.date, end: dt.date
) -> list[Decimal]:
    """One amount per day from start to end inclusive; days without usage are zero and
    points outside the range are left out."""
    by_day: dict[dt.date, Decimal] = {}
    for day, amount in points:
        if start <= day <= end:
            by_day[day] = by_day.get(day, Decimal(0)) + Decimal(amount)
    days = (end - start).days + 1
    return [by_day.get(start + dt.timedelta(days=i), Decimal(0)) for i in range(max(days, 0))]


def rate_window(*, start: dt.date, end: dt.date, today: dt.date) -> tuple[dt.date, dt.date]:
    """The days a burn rate is the mean over: the last RATE_WINDOW_DAYS up to today (up to
    the end date once it has passed), none before the start. Before the start the window
    is empty (first after last)."""
    last = min(today, end)
    return max(start, last - dt.timedelta(days=RATE_WINDOW_DAYS - 1)), last


def mean_per_day(total: Decimal, days: int) -> Decimal:
    """SUs per day, to the SU's places; nothing over no days."""
    if days <= 0:
        return Decimal(0)
    return (total / days).quantize(SU_QUANTUM)


def burn_rate(series: list[Decimal], window: int = RATE_WINDOW_DAYS) -> Decimal:
    """Mean SUs per day over the last `window` days of the series."""
    recent = series[-window:]
    return mean_per_day(sum(recent, Decimal(0)), len(recent))


def projected_exhaustion(remaining: Decimal, rate: Decimal, today: dt.date) -> dt.date | None:
    """The day the remaining SUs run out at `rate` per day; today if they already have,
    None if nothing is being used."""
    if remaining <= 0:
        return today
    if rate <= 0:
        return None
    days = (remaining / rate).to_integral_value(rounding=ROUND_CEILING)
    # Far beyond any allocation's end: no date worth showing (and none a date can hold).
    if days > 36500:
        return None
    return today + dt.timedelta(days=int(days))


def classify(series: list[Decimal], window: int = RATE_WINDOW_DAYS) -> str:
    recent = series[-window:]
    n = len(recent)
    if n < MIN_PATTERN_DAYS:
        return NEW
    total = sum(recent, Decimal(0))
    if total <= 0:
        return IDLE
    mean = total / n
    # Least-squares slope of amount over day number 0..n-1.
    x_mean = Decimal(n - 1) / 2
    sxx = sum(((Decimal(i) - x_mean) ** 2 for i in range(n)), Decimal(0))
    sxy = sum(((Decimal(i) - x_mean) * (y - mean) for i, y in enumerate(recent)), Decimal(0))
    change = sxy / sxx * (n - 1) / mean
    if change >= TREND_SHARE:
        return GROWING
    if change <= -TREND_SHARE:
        return DECLINING
    variance = sum(((y - mean) ** 2 for y in recent), Decimal(0)) / n
    if variance.sqrt() >= BURSTY_CV * mean:
        return BURSTY
    return STEADY


@dataclass(frozen=True)
class Forecast:
    today: dt.date
    window_days: int
    burn_rate: Decimal  # SUs per day over the window
    remaining: Decimal
    exhaustion: dt.date | None
    pattern: str
    # Set when the SUs run out before the end: how many more, and by when to ask.
    supplement_su: Decimal | None
    supplement_by: dt.date | None
    # Set when a notable part of the budget will likely be left at the end.
    unused_su: Decimal | None
    recommendation: str


def forecast(
    *,
    points: Iterable[tuple[dt.date, Decimal]],
    start: dt.date,
    end: dt.date,
    budget: Decimal,
    remaining: Decimal,
    today: dt.date,
) -> Forecast:
    """The forecast for an allocation from its daily usage `points` (day, SUs)."""
    series = dense_series(points, *rate_window(start=start, end=end, today=today))
    window = len(series)
    rate = burn_rate(series)
    exhaustion = projected_exhaustion(remaining, rate, today)
    pattern = classify(series)
    supplement_su = supplement_by = unused = None
    per = f"{rate} SUs a day over the last {window} days"
    if today > end:
        text = f"The allocation ended on {end:%Y-%m-%d}."
    elif today < start:
        text = f"The allocation starts on {start:%Y-%m-%d}."
    elif remaining <= 0:
        text = "The SUs are used up: request a supplement now to keep running jobs."
        supplement_by = today
    elif exhaustion is not None and exhaustion <= end:
        # The days after the exhaustion day, to the end date inclusive.
        supplement_su = (rate * (end - exhaustion).days).quantize(WHOLE, ROUND_CEILING)
        supplement_by = max(today, exhaustion - dt.timedelta(days=REVIEW_LEAD_DAYS))
        text = (
            f"At {per}, the SUs run out on {exhaustion:%Y-%m-%d}, before the allocation ends "
            f"on {end:%Y-%m-%d}: request a supplement of about {supplement_su} SUs "
            f"before {supplement_by:%Y-%m-%d}."
        )
    else:
        days_left = (end - today).days + 1
        left_over = (remaining - rate * days_left).quantize(WHOLE, ROUND_FLOOR)
        if left_over > 0 and left_over > budget * UNUSED_SHARE:
            unused = left_over
            text = (
                f"At {per}, about {unused} SUs will likely go unused by {end:%Y-%m-%d}: "
                "plan more work or give them back for others to use."
            )
        else:
            text = f"At {per}, the SUs last until the allocation ends on {end:%Y-%m-%d}."
    return Forecast(
        today=today,
        window_days=window,
        burn_rate=rate,
        remaining=remaining,
        exhaustion=exhaustion,
        pattern=pattern,
        supplement_su=supplement_su,
        supplement_by=supplement_by,
        unused_su=unused,
        recommendation=text,
    )
