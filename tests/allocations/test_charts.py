"""Figure builders: pure functions, checked against plotly's own figure schema."""

import datetime as dt
import json
from decimal import Decimal

import plotly.graph_objects as go
import pytest

from allocations import charts
from allocations.forecasts import forecast

D = Decimal
START = dt.date(2026, 1, 1)
END = dt.date(2026, 12, 31)


def valid(figure: dict) -> dict:
    """Plotly raises on any property it does not know; the dict must also be JSON."""
    go.Figure(figure)
    json.dumps(figure)
    return figure


def trace(figure: dict, name: str) -> dict:
    return next(t for t in figure["data"] if t["name"].startswith(name))


class TestBurndown:
    @pytest.fixture
    def figure(self):
        today = dt.date(2026, 1, 10)
        used = [(START + dt.timedelta(days=i), D(10)) for i in range(10)]
        fc = forecast(
            points=used, start=START, end=END, budget=D(365), remaining=D(265), today=today
        )
        return valid(
            charts.burndown_figure(
                title="folding-gpu",
                start=START,
                end=END,
                # Created on Jan 3, approved on Jan 5: the grant counts from the start.
                budget_steps=[(dt.date(2026, 1, 3), D(0)), (dt.date(2026, 1, 5), D(365))],
                daily_used=used,
                forecast=fc,
            )
        )

    def test_remaining_falls_by_each_days_usage_from_the_budget(self, figure):
        remaining = trace(figure, "Remaining")
        assert remaining["x"][:2] == ["2026-01-01", "2026-01-02"]
        assert remaining["y"][:3] == [355.0, 345.0, 335.0]
        assert remaining["y"][-1] == 265.0

    def test_the_ideal_burn_runs_from_the_budget_to_zero(self, figure):
        ideal = trace(figure, "Ideal")
        assert (ideal["x"], ideal["y"]) == (["2026-01-01", "2026-12-31"], [365.0, 0])

    def test_the_projection_reaches_zero_on_the_exhaustion_date(self, figure):
        projected = trace(figure, "Projected")
        assert projected["name"] == "Projected at 10.0000 SU/day"
        # 265 SUs at 10 a day from Jan 10: gone on day 27, Feb 6.
        assert (projected["x"], projected["y"]) == (["2026-01-10", "2026-02-06"], [265.0, 0.0])
        (marker,) = figure["layout"]["shapes"]
        assert marker["x0"] == "2026-02-06"
        assert figure["layout"]["annotations"][0]["text"] == "Projected exhaustion 2026-02-06"

    def test_a_later_top_up_raises_remaining_on_its_day(self):
        used = [(START, D(100))]
        fc = forecast(
            points=used,
            start=START,
            end=END,
            budget=D(600),
            remaining=D(500),
            today=dt.date(2026, 1, 3),
        )
        figure = valid(
            charts.burndown_figure(
                title="t",
                start=START,
                end=END,
                budget_steps=[(START, D(100)), (dt.date(2026, 1, 2), D(600))],
                daily_used=used,
                forecast=fc,
            )
        )
        assert trace(figure, "Remaining")["y"] == [0.0, 500.0, 500.0]

    def test_an_ended_allocation_has_no_projection(self):
        fc = forecast(
            points=[],
            start=START,
            end=END,
            budget=D(10),
            remaining=D(10),
            today=dt.date(2027, 2, 1),
        )
        figure = valid(
            charts.burndown_figure(
                title="t",
                start=START,
                end=END,
                budget_steps=[(START, D(10))],
                daily_used=[],
                forecast=fc,
            )
        )
        assert [t["name"] for t in figure["data"]] == ["Remaining", "Ideal linear burn"]
        assert len(trace(figure, "Remaining")["x"]) == 365


class TestStackedUsage:
    def test_it_stacks_one_series_per_label_biggest_first(self):
        figure = valid(
            charts.stacked_usage_figure(
                title="By member",
                rows=[
                    ("bob", dt.date(2026, 3, 1), D(5)),
                    ("alice", dt.date(2026, 3, 1), D(1)),
                    ("alice", dt.date(2026, 3, 3), D(2)),
                    ("bob", dt.date(2026, 3, 3), D("2.5")),
                ],
                start=dt.date(2026, 3, 1),
                end=dt.date(2026, 3, 31),
            )
        )
        assert figure["layout"]["barmode"] == "stack"
        assert figure["layout"]["title"]["text"] == "By member (per day)"
        assert [(t["name"], t["x"], t["y"]) for t in figure["data"]] == [
            ("bob", ["2026-03-01", "2026-03-03"], [5.0, 2.5]),
            ("alice", ["2026-03-01", "2026-03-03"], [1.0, 2.0]),
        ]

    def test_other_members_come_last(self):
        figure = valid(
            charts.stacked_usage_figure(
                title="t",
                rows=[(charts.OTHERS, START, D(50)), ("bob", START, D(1))],
                start=START,
                end=START,
            )
        )
        assert [t["name"] for t in figure["data"]] == ["bob", charts.OTHERS]

    @pytest.mark.parametrize(
        ("end", "bucket", "first"),
        [
            (dt.date(2026, 3, 31), "day", "2026-01-07"),
            (dt.date(2026, 9, 30), "week", "2026-01-05"),  # the Monday of Jan 7
            (dt.date(2028, 12, 31), "month", "2026-01-01"),
        ],
    )
    def test_long_ranges_are_drawn_by_week_or_month(self, end, bucket, first):
        figure = charts.stacked_usage_figure(
            title="t", rows=[("bob", dt.date(2026, 1, 7), D(1))], start=START, end=end
        )
        assert figure["layout"]["title"]["text"] == f"t (per {bucket})"
        assert figure["data"][0]["x"] == [first]

    def test_rows_summed_by_period_keep_a_period_that_began_before_the_start(self):
        # The reader sums by week and dates each sum by its Monday, Jan 5 here.
        figure = charts.stacked_usage_figure(
            title="t",
            rows=[("bob", dt.date(2026, 1, 5), D(3)), ("bob", dt.date(2025, 12, 29), D(9))],
            start=dt.date(2026, 1, 7),
            end=dt.date(2026, 9, 30),
        )
        assert [(t["x"], t["y"]) for t in figure["data"]] == [(["2026-01-05"], [3.0])]


class TestProjectOverview:
    def test_each_allocation_shows_used_held_and_remaining(self):
        figure = valid(
            charts.project_overview_figure(
                title="Protein folding",
                allocations=[
                    ("gpu (gpu1)", D(1000), D(600), D(50)),
                    ("cpu (cpu1)", D(10), D(12), D(0)),
                ],
            )
        )
        by_name = {t["name"]: t["x"] for t in figure["data"]}
        assert by_name == {
            "Used": [600.0, 12.0],
            "Held for running jobs": [50.0, 0.0],
            "Remaining": [350.0, 0.0],
            "Overdrawn": [0.0, 2.0],
        }


class TestCommitment:
    def test_a_budget_is_spread_evenly_over_its_days(self):
        months = charts.month_starts(dt.date(2026, 1, 1), dt.date(2026, 3, 31))
        committed = charts.prorate_by_month(
            [
                (dt.date(2026, 1, 1), dt.date(2026, 12, 31), D(3650)),  # 10 a day
                (dt.date(2026, 2, 15), dt.date(2026, 2, 28), D(140)),  # inside February
            ],
            months,
        )
        assert committed == {
            dt.date(2026, 1, 1): D(310),
            dt.date(2026, 2, 1): D(420),
            dt.date(2026, 3, 1): D(310),
        }

    def test_the_figure_compares_committed_and_used_with_capacity(self):
        months = [dt.date(2026, 1, 1), dt.date(2026, 2, 1)]
        figure = valid(
            charts.commitment_figure(
                title="gpu1",
                committed={months[0]: D(900), months[1]: D(1200)},
                used={months[0]: D(700)},
                capacity=D(1000),
            )
        )
        assert [(t["name"], t["y"]) for t in figure["data"]] == [
            ("Committed", [900.0, 1200.0]),
            ("Used", [700.0, 0.0]),
            ("Capacity", [1000.0, 1000.0]),
        ]

    def test_without_a_capacity_there_is_no_capacity_line(self):
        figure = valid(
            charts.commitment_figure(title="t", committed={START: D(1)}, used={}, capacity=None)
        )
        assert [t["name"] for t in figure["data"]] == ["Committed", "Used"]


class TestDecisionTime:
    def test_it_is_a_histogram_per_outcome_with_the_median(self):
        figure = valid(
            charts.decision_time_figure(
                title="gpu1",
                decisions=[("approved", D("0.5")), ("approved", D(3)), ("rejected", D(10))],
            )
        )
        assert [(t["name"], t["x"]) for t in figure["data"]] == [
            ("Approved", [0.5, 3.0]),
            ("Rejected", [10.0]),
        ]
        assert figure["layout"]["annotations"][0]["text"] == "3 decisions, median 3.0 days"

    def test_no_decisions_draw_an_empty_chart(self):
        figure = valid(charts.decision_time_figure(title="t", decisions=[]))
        assert figure["data"] == [] and figure["layout"]["annotations"] == []
