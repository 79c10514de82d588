"""Forecasts on synthetic daily series: no database."""

import datetime as dt
from decimal import Decimal

import pytest

from allocations.forecasts import (
    BURSTY,
    DECLINING,
    GROWING,
    IDLE,
    NEW,
    STEADY,
    burn_rate,
    classify,
    dense_series,
    forecast,
    projected_exhaustion,
)

D = Decimal
START = dt.date(2026, 1, 1)
END = dt.date(2026, 12, 31)
TODAY = dt.date(2026, 6, 15)


def series(*values) -> list[Decimal]:
    return [D(v) for v in values]


def points(values, last=TODAY):
    """Daily amounts ending on `last`."""
    first = last - dt.timedelta(days=len(values) - 1)
    return [(first + dt.timedelta(days=i), D(v)) for i, v in enumerate(values)]


class TestDenseSeries:
    def test_it_fills_idle_days_with_zero_and_drops_days_outside(self):
        got = dense_series(
            [(dt.date(2026, 3, 2), D(5)), (dt.date(2026, 3, 4), D(1)), (dt.date(2026, 4, 1), D(9))],
            dt.date(2026, 3, 1),
            dt.date(2026, 3, 4),
        )
        assert got == series(0, 5, 0, 1)


class TestBurnRate:
    def test_it_is_the_mean_of_the_last_28_days_idle_days_included(self):
        assert burn_rate(series(*([100] * 10 + [0] * 14 + [7] * 14))) == D("3.5")

    def test_a_shorter_history_is_averaged_over_what_there_is(self):
        assert burn_rate(series(3, 4, 5)) == D(4)

    def test_no_history_burns_nothing(self):
        assert burn_rate([]) == 0


class TestProjectedExhaustion:
    def test_it_is_the_day_the_remaining_sus_reach_zero(self):
        assert projected_exhaustion(D(100), D(10), TODAY) == TODAY + dt.timedelta(days=10)

    def test_a_part_day_rounds_up(self):
        assert projected_exhaustion(D(101), D(10), TODAY) == TODAY + dt.timedelta(days=11)

    def test_an_exhausted_allocation_ran_out_today(self):
        assert projected_exhaustion(D(-5), D(10), TODAY) == TODAY

    def test_without_usage_there_is_no_date(self):
        assert projected_exhaustion(D(100), D(0), TODAY) is None


class TestClassify:
    @pytest.mark.parametrize(
        ("values", "pattern"),
        [
            ([10] * 28, STEADY),
            ([9, 11] * 14, STEADY),
            ([0] * 28, IDLE),
            (list(range(1, 29)), GROWING),
            ([28 - i for i in range(28)], DECLINING),
            # Heavy days scattered among idle ones, with no trend.
            ([0, 0, 0, 50, 0, 0, 0] * 4, BURSTY),
            ([10] * 5, NEW),
        ],
        ids=["flat", "wobbly", "idle", "ramp-up", "ramp-down", "spikes", "five-days"],
    )
    def test_it_names_the_pattern(self, values, pattern):
        assert classify(series(*values)) == pattern

    def test_only_the_last_28_days_count(self):
        assert classify(series(*([100] * 60 + [10] * 28))) == STEADY


class TestForecast:
    def test_running_out_before_the_end_recommends_a_supplement_in_time(self):
        result = forecast(
            points=points([10] * 28),
            start=START,
            end=END,
            budget=D(2000),
            remaining=D(500),
            today=TODAY,
        )

        assert result.burn_rate == 10
        assert result.window_days == 28
        # 500 SUs at 10 a day last the 50 days after today.
        assert result.exhaustion == dt.date(2026, 8, 4)
        assert result.pattern == STEADY
        # Aug 5 to Dec 31 is 149 days at 10 SU a day; ask two weeks before running out.
        assert result.supplement_su == 1490
        assert result.supplement_by == dt.date(2026, 7, 21)
        assert result.unused_su is None
        assert result.recommendation == (
            "At 10.0000 SUs a day over the last 28 days, the SUs run out on 2026-08-04, "
            "before the allocation ends on 2026-12-31: request a supplement of about 1490 "
            "SUs before 2026-07-21."
        )

    def test_light_use_says_how_much_will_likely_go_unused(self):
        result = forecast(
            points=points([1] * 28),
            start=START,
            end=END,
            budget=D(1000),
            remaining=D(600),
            today=TODAY,
        )
        # 200 days left including today, at 1 SU a day: 400 left over.
        assert (result.unused_su, result.supplement_su) == (400, None)
        assert "about 400 SUs will likely go unused by 2026-12-31" in result.recommendation

    def test_a_little_left_over_is_on_track(self):
        result = forecast(
            points=points([3] * 28),
            start=START,
            end=END,
            budget=D(1000),
            remaining=D(650),
            today=TODAY,
        )
        assert result.unused_su is None
        assert result.recommendation.endswith(
            "the SUs last until the allocation ends on 2026-12-31."
        )

    def test_a_young_allocation_averages_over_its_own_days(self):
        result = forecast(
            points=points([20] * 5),
            start=TODAY - dt.timedelta(days=4),
            end=END,
            budget=D(10000),
            remaining=D(9900),
            today=TODAY,
        )
        assert (result.window_days, result.burn_rate, result.pattern) == (5, 20, NEW)

    def test_an_exhausted_allocation_asks_for_sus_now(self):
        result = forecast(
            points=points([10] * 28),
            start=START,
            end=END,
            budget=D(100),
            remaining=D(0),
            today=TODAY,
        )
        assert (result.exhaustion, result.supplement_by) == (TODAY, TODAY)
        assert "used up" in result.recommendation

    def test_an_ended_allocation_says_so(self):
        result = forecast(
            points=[],
            start=START,
            end=dt.date(2026, 5, 31),
            budget=D(100),
            remaining=D(50),
            today=TODAY,
        )
        assert result.recommendation == "The allocation ended on 2026-05-31."
