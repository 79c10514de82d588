"""The figures the admin decides on: burn rate, when the SUs run out, and the cluster's
committed capacity now and if a request is approved."""

import datetime as dt
from decimal import Decimal

from allocations import selectors, services
from allocations.models import UsageAdjustment
from tests.conftest import END, NOW, START, usage
from tests.review.conftest import request_new_allocations

JUNE = dt.date(2026, 6, 1)


def charge(allocation, user, resource, job: str, gpu_hours, when):
    services.usage_record_batch(
        cluster=allocation.cluster,
        records=[usage(allocation, user, resource, job, gpu_hours, when=when)],
    )


class TestBurnRate:
    def test_it_is_the_last_30_days_net_charges_per_day(self, allocation, bob, gpu):
        charge(allocation, bob, gpu, "old", 50, NOW - dt.timedelta(days=31))  # outside
        charge(allocation, bob, gpu, "a", 15, NOW - dt.timedelta(days=29))  # 30 SU
        charge(allocation, bob, gpu, "b", 30, NOW - dt.timedelta(days=1))  # 60 SU
        UsageAdjustment.objects.create(
            usage=allocation.usage.get(job_id="b"),
            allocation=allocation,
            user=bob,
            kind="REFUND",
            su_delta=Decimal("-30"),
            reason="Node failure",
        )
        # Made an hour before "now" (created is set on insert, to the real clock).
        UsageAdjustment.objects.filter(kind="REFUND").update(created=NOW - dt.timedelta(hours=1))

        rates = selectors.burn_rates(allocations=[allocation], now=NOW)

        assert rates == {allocation.pk: Decimal("2.0000")}  # (30 + 60 - 30) / 30

    def test_a_young_allocation_is_divided_by_its_days_so_far(self, allocation, bob, gpu):
        now = dt.datetime.combine(START + dt.timedelta(days=10), dt.time(12), tzinfo=dt.UTC)
        charge(allocation, bob, gpu, "a", 50, now - dt.timedelta(days=2))  # 100 SU

        assert selectors.burn_rates(allocations=[allocation], now=now) == {
            allocation.pk: Decimal("10.0000")
        }

    def test_no_usage_burns_nothing_and_never_runs_out(self, allocation):
        rate = selectors.burn_rates(allocations=[allocation], now=NOW)[allocation.pk]

        assert rate == 0
        assert selectors.exhaustion_date(remaining=Decimal(5), burn_rate=rate, today=JUNE) is None

    def test_the_remaining_sus_run_out_at_the_burn_rate(self):
        assert selectors.exhaustion_date(
            remaining=Decimal(100), burn_rate=Decimal("7.5"), today=JUNE
        ) == dt.date(2026, 6, 14)

    def test_two_queries_for_any_number_of_allocations(
        self, allocation, alice, project, cluster, gpu, django_assert_num_queries
    ):
        others = [r.allocation for r in request_new_allocations(
            alice=alice, project=project, cluster=cluster, gpu=gpu, n=5
        )]  # fmt: skip

        with django_assert_num_queries(2):  # usage charged, then adjustments made
            selectors.burn_rates(allocations=[allocation, *others], now=NOW)


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
