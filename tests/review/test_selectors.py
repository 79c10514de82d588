"""The figures the admin decides on: burn rate, when the SUs run out, and the cluster's
committed capacity now and if a request is approved."""

import datetime as dt
from decimal import Decimal

from allocations import selectors, services
from allocations.adjustments import usage_refund
from tests.conftest import END, NOW, START, usage

JUNE = dt.date(2026, 6, 1)


def charge(allocation, user, resource, job: str, gpu_hours, when):
    services.usage_record_batch(
        cluster=allocation.cluster,
        records=[usage(allocation, user, resource, job, gpu_hours, when=when)],
    )


class TestBurnRate:
    """The admin's burn rate is the PI's forecast's: the daily rollups' mean over the
    last RATE_WINDOW_DAYS (28) days, a refund counted on its job's day."""

    def test_it_is_the_mean_net_charge_of_the_last_28_days(
        self, allocation, bob, gpu, dana, django_capture_on_commit_callbacks
    ):
        charge(allocation, bob, gpu, "old", 50, NOW - dt.timedelta(days=28))  # a day before
        charge(allocation, bob, gpu, "first", 7, NOW - dt.timedelta(days=27))  # 14 SU
        charge(allocation, bob, gpu, "b", 30, NOW - dt.timedelta(days=1))  # 60 SU
        charge(allocation, bob, gpu, "c", 15, NOW - dt.timedelta(hours=1))  # 30 SU
        with django_capture_on_commit_callbacks(execute=True):
            usage_refund(actor=dana, cluster=allocation.cluster, job_id="b", reason="Node failure")
        allocation.refresh_from_db()

        forecast = selectors.allocation_forecast(allocation=allocation, today=NOW.date())

        assert forecast.window_days == 28
        assert forecast.burn_rate == Decimal("1.5714")  # (14 + 60 - 60 + 30) / 28

    def test_a_young_allocation_is_divided_by_its_days_so_far(self, allocation, bob, gpu):
        today = START + dt.timedelta(days=10)
        charge(allocation, bob, gpu, "a", 50, dt.datetime.combine(today, dt.time(1), dt.UTC))

        forecast = selectors.allocation_forecast(allocation=allocation, today=today)

        assert (forecast.window_days, forecast.burn_rate) == (11, Decimal("9.0909"))  # 100 / 11

    def test_an_ended_allocation_is_read_over_its_last_28_days(self, allocation, bob, gpu):
        charge(allocation, bob, gpu, "last", 50, dt.datetime.combine(END, dt.time(1), dt.UTC))

        forecast = selectors.allocation_forecast(
            allocation=allocation, today=END + dt.timedelta(days=60)
        )

        assert (forecast.window_days, forecast.burn_rate) == (28, Decimal("3.5714"))  # 100 / 28

    def test_no_usage_burns_nothing_and_never_runs_out(self, allocation):
        forecast = selectors.allocation_forecast(allocation=allocation, today=NOW.date())

        assert forecast.burn_rate == 0
        assert forecast.exhaustion is None


class TestCommitment:
    def test_a_budget_is_spread_evenly_over_its_days(self):
        # 365 SU over 2026: one SU a day, 30 of them in June.
        share = selectors.su_share_in(
            budget=Decimal(365), start=START, end=END, first=JUNE, last=dt.date(2026, 6, 30)
        )

        assert share == Decimal(30)

    def test_no_overlap_is_no_share(self):
        share = selectors.su_share_in(
            budget=Decimal(365),
            start=START,
            end=END,
            first=dt.date(2027, 1, 1),
            last=dt.date(2027, 1, 31),
        )

        assert share == 0

    def test_now_and_if_a_top_up_is_approved(self, allocation, alice, cluster):
        request = services.change_request_submit(
            actor=alice, allocation=allocation, su_delta="365", justification="More"
        )

        commitment = selectors.commitments_for_requests(requests=[request], today=NOW.date())[
            request.pk
        ]

        assert commitment.month == JUNE
        assert commitment.committed == Decimal("82.1918")  # 1000 x 30 / 365
        assert commitment.if_approved == Decimal("112.1918")  # + 365 x 30 / 365
        assert commitment.capacity == Decimal(100000)
        assert commitment.committed_percent == Decimal("0.1")
        assert not commitment.over_capacity

    def test_a_new_allocation_counts_only_once_approved(self, pending_request):
        commitment = selectors.commitments_for_requests(
            requests=[pending_request], today=NOW.date()
        )[pending_request.pk]

        assert commitment.committed == 0
        assert commitment.if_approved == Decimal("82.1918")

    def test_a_later_allocation_is_judged_in_its_first_month(self, alice, project, cluster, gpu):
        request = services.allocation_request_create(
            actor=alice,
            project=project,
            cluster=cluster,
            name="next-year",
            resources=[gpu],
            su_amount="3100",
            start=dt.date(2027, 1, 1),
            end=dt.date(2027, 1, 31),
            justification="Next year",
        )

        commitment = selectors.commitments_for_requests(requests=[request], today=NOW.date())[
            request.pk
        ]

        assert (commitment.month, commitment.if_approved) == (dt.date(2027, 1, 1), Decimal(3100))

    def test_a_freeze_request_frees_its_share_and_over_capacity_shows(
        self, allocation, alice, cluster
    ):
        cluster.su_capacity_per_month = Decimal(50)
        cluster.save()
        request = services.change_request_submit(
            actor=alice, allocation=allocation, requested_status="INACTIVE", justification="Pause"
        )

        commitment = selectors.commitments_for_requests(requests=[request], today=NOW.date())[
            request.pk
        ]

        assert (commitment.committed, commitment.if_approved) == (Decimal("82.1918"), 0)
        assert commitment.committed_percent == Decimal("164.4")
        assert not commitment.over_capacity  # judged on the figure if approved

    def test_the_cluster_by_month(self, allocation, cluster):
        months = selectors.cluster_commitment_by_month(cluster=cluster, first_month=NOW.date())

        assert [m.month for m in months][:2] == [JUNE, dt.date(2026, 7, 1)]
        assert len(months) == 12
        assert months[1].committed == Decimal("84.9315")  # 1000 x 31 / 365
        assert months[-1].committed == 0  # May 2027, after the end
