"""The burn-down builder is a pure function: no database, no request."""

import datetime as dt
from decimal import Decimal

from allocations.burn_down import BURN_RATE_DAYS, burn_down

D = dt.date


def build(**overrides):
    args = {
        "start": D(2026, 1, 1),
        "end": D(2026, 12, 31),
        "today": D(2026, 1, 10),
        "budget_steps": [(D(2026, 1, 1), Decimal(1000))],
        "daily_usage": [],
    }
    args.update(overrides)
    return burn_down(**args)


class TestBurnDown:
    def test_it_draws_remaining_from_the_start_to_today(self):
        burn = build(daily_usage=[(D(2026, 1, 2), Decimal("100.5")), (D(2026, 1, 5), Decimal(50))])
        budget, remaining = burn.figure["data"][:2]
        assert remaining["x"][0] == D(2026, 1, 1)
        assert remaining["x"][-1] == D(2026, 1, 10)
        assert remaining["y"][0] == Decimal(1000)
        assert remaining["y"][1] == Decimal("899.5")
        assert remaining["y"][-1] == Decimal("849.5")
        assert burn.remaining == Decimal("849.5")
        assert set(budget["y"]) == {Decimal(1000)}

    def test_the_budget_line_steps_at_each_diff(self):
        burn = build(
            budget_steps=[(D(2026, 1, 1), Decimal(1000)), (D(2026, 1, 6), Decimal(1500))],
            daily_usage=[(D(2026, 1, 3), Decimal(100))],
        )
        budget, remaining = burn.figure["data"][:2]
        assert budget["y"][4] == Decimal(1000)
        assert budget["y"][5] == Decimal(1500)
        assert remaining["y"][5] == Decimal(1400)

    def test_it_sums_several_rows_of_one_day_and_keeps_decimals(self):
        # Usage and its adjustments arrive as separate rows for the same day.
        burn = build(
            daily_usage=[(D(2026, 1, 2), Decimal("0.0001")), (D(2026, 1, 2), Decimal("-0.0001"))]
        )
        assert burn.remaining == Decimal(1000)
        assert all(isinstance(y, Decimal) for y in burn.figure["data"][1]["y"])

    def test_it_projects_exhaustion_at_the_recent_rate(self):
        usage = [(D(2026, 1, 1) + dt.timedelta(days=i), Decimal(10)) for i in range(30)]
        burn = build(today=D(2026, 1, 30), daily_usage=usage)
        assert burn.burn_rate == Decimal(10)
        assert burn.remaining == Decimal(700)
        assert burn.exhausted_on == D(2026, 4, 10)  # 700 SU at 10 a day
        projection = burn.figure["data"][2]
        assert projection["x"] == [D(2026, 1, 30), D(2026, 4, 10)]
        assert projection["y"] == [Decimal(700), Decimal(0)]

    def test_the_rate_counts_only_the_last_window(self):
        burn = build(
            today=D(2026, 6, 30),
            daily_usage=[(D(2026, 1, 5), Decimal(900)), (D(2026, 6, 30), Decimal(BURN_RATE_DAYS))],
        )
        assert burn.burn_rate == Decimal(1)

    def test_no_recent_usage_means_no_projection(self):
        burn = build(daily_usage=[(D(2026, 1, 2), Decimal(10))], today=D(2026, 5, 1))
        assert burn.burn_rate == 0
        assert burn.exhausted_on is None
        assert len(burn.figure["data"]) == 2

    def test_an_overdrawn_allocation_has_no_projection(self):
        burn = build(daily_usage=[(D(2026, 1, 2), Decimal(1200))])
        assert burn.remaining == Decimal(-200)
        assert burn.exhausted_on is None

    def test_a_projection_stops_at_the_end_date(self):
        burn = build(
            end=D(2026, 1, 20),
            today=D(2026, 1, 10),
            daily_usage=[(D(2026, 1, 10), Decimal(30))],
        )
        assert burn.figure["data"][2]["x"][-1] == D(2026, 1, 20)

    def test_after_the_end_it_draws_up_to_the_end_only(self):
        burn = build(end=D(2026, 1, 5), today=D(2026, 3, 1))
        assert burn.figure["data"][1]["x"][-1] == D(2026, 1, 5)
        assert burn.figure["layout"]["xaxis"]["range"] == [D(2026, 1, 1), D(2026, 1, 5)]

    def test_late_usage_after_the_window_still_counts(self):
        burn = build(
            end=D(2026, 1, 5), today=D(2026, 3, 1), daily_usage=[(D(2026, 2, 1), Decimal(5))]
        )
        assert burn.remaining == Decimal(995)
