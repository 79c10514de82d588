import dataclasses
import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext

from allocations import services
from allocations.adjustments import usage_refund
from allocations.ledger import ledger_drift
from allocations.models import Allocation, Cluster, Membership, Resource, Usage
from tests.allocations.dbstate import concurrently, unchanged
from tests.conftest import END, START, usage

MAR = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)


def record(cluster, *records) -> services.UsageBatchResult:
    return services.usage_record_batch(cluster=cluster, records=list(records))


def rejected(excinfo) -> list[tuple[int, str]]:
    return [(e["index"], e["field"]) for e in excinfo.value.errors]


@pytest.fixture
def rate_change(gpu, dana):
    """The GPU rate goes from 2 to 3 SU per GPU-hour at MAR."""
    services.rate_close(actor=dana, rate=gpu.rates.get(), end=MAR)
    services.rate_add(actor=dana, resource=gpu, su_per_unit_hour="3", start=MAR)


@pytest.fixture
def tpu(cluster):
    """A resource of the cluster, with a rate, that the allocation does not include."""
    resource = Resource.objects.create(cluster=cluster, name="TPU", kind="OTHER", unit="chip")
    services.rate_add(
        actor=None, resource=resource, su_per_unit_hour="1", start=MAR - dt.timedelta(days=365)
    )
    return resource


class TestUsageRecordBatch:
    def test_it_charges_sus_at_the_rate_in_force(self, allocation, alice, bob, gpu, cpu):
        result = record(
            allocation.cluster,
            usage(allocation, bob, gpu, "101", 10),  # 10 GPU-hours x 2
            usage(allocation, alice, cpu, "102", "123.4567"),  # 123.4567 core-hours x 0.01
        )

        assert result == services.UsageBatchResult(
            created=2, duplicates=0, su_charged=Decimal("21.2346")
        )
        bobs = Usage.objects.get(job_id="101")
        assert (bobs.su_amount, bobs.raw_unit_seconds, bobs.rate) == (
            20,
            36000,
            gpu.rates.get(),
        )
        assert Usage.objects.get(job_id="102").su_amount == Decimal("1.2346")
        allocation.refresh_from_db()
        assert allocation.su_used == Decimal("21.2346")
        assert Membership.objects.get(allocation=allocation, user=bob).su_used == 20
        assert Membership.objects.get(allocation=allocation, user=alice).su_used == Decimal(
            "1.2346"
        )

    def test_it_charges_across_a_rate_change_by_charge_time(
        self, allocation, bob, gpu, rate_change
    ):
        record(
            allocation.cluster,
            usage(allocation, bob, gpu, "before", 1, when=MAR - SECOND),
            usage(allocation, bob, gpu, "at", 1, when=MAR),
            usage(allocation, bob, gpu, "after", 1, when=MAR + dt.timedelta(days=30)),
        )

        charges = dict(Usage.objects.values_list("job_id", "su_amount"))
        assert charges == {"before": 2, "at": 3, "after": 3}
        rates = dict(Usage.objects.values_list("job_id", "rate__su_per_unit_hour"))
        assert rates == {"before": 2, "at": 3, "after": 3}

    def test_a_rate_change_does_not_rewrite_history(self, allocation, bob, gpu, dana):
        record(allocation.cluster, usage(allocation, bob, gpu, "1", 1, when=MAR - SECOND))
        before = list(Usage.objects.values())

        services.rate_close(actor=dana, rate=gpu.rates.get(), end=MAR)
        services.rate_add(actor=dana, resource=gpu, su_per_unit_hour="3", start=MAR)

        assert list(Usage.objects.values()) == before
        allocation.refresh_from_db()
        assert allocation.su_used == 2

    def test_it_counts_duplicates_and_does_not_charge_them_again(
        self, allocation, alice, bob, gpu, cpu
    ):
        batch = [usage(allocation, bob, gpu, "1", 10), usage(allocation, alice, cpu, "1", 100)]
        record(allocation.cluster, *batch)

        with unchanged():
            result = record(allocation.cluster, *batch)

        assert result == services.UsageBatchResult(created=0, duplicates=2, su_charged=Decimal(0))

    def test_a_replay_charges_only_the_new_jobs(self, allocation, bob, gpu):
        record(allocation.cluster, usage(allocation, bob, gpu, "1", 10))

        result = record(
            allocation.cluster,
            usage(allocation, bob, gpu, "1", 10),
            usage(allocation, bob, gpu, "2", 5),
        )

        assert (result.created, result.duplicates, result.su_charged) == (1, 1, 10)
        allocation.refresh_from_db()
        assert allocation.su_used == 30

    def test_a_job_reported_with_another_amount_is_corrected_by_an_adjustment(
        self, allocation, bob, gpu
    ):
        record(allocation.cluster, usage(allocation, bob, gpu, "1", 10))

        result = record(allocation.cluster, usage(allocation, bob, gpu, "1", 11))

        assert (result.created, result.duplicates, result.corrected) == (0, 0, 1)
        assert result.su_charged == 2
        original = Usage.objects.get(job_id="1")
        assert (original.raw_unit_seconds, original.su_amount) == (36000, 20)
        correction = original.adjustments.get()
        assert (correction.kind, correction.su_delta, correction.raw_unit_seconds) == (
            "CORRECTION",
            2,
            39600,
        )
        allocation.refresh_from_db()
        assert allocation.su_used == 22
        assert ledger_drift() == []

    def test_a_corrected_job_reported_again_is_a_duplicate(self, allocation, bob, gpu):
        record(allocation.cluster, usage(allocation, bob, gpu, "1", 10))
        record(allocation.cluster, usage(allocation, bob, gpu, "1", 11))

        with unchanged():
            result = record(allocation.cluster, usage(allocation, bob, gpu, "1", 11))

        assert (result.duplicates, result.corrected) == (1, 0)

    def test_a_refunded_job_stays_refunded_when_reported_again(self, allocation, bob, gpu, dana):
        record(allocation.cluster, usage(allocation, bob, gpu, "1", 10))
        usage_refund(actor=dana, cluster=allocation.cluster, job_id="1", reason="Node failure")

        with unchanged():
            result = record(allocation.cluster, usage(allocation, bob, gpu, "1", 12))

        assert (result.duplicates, result.corrected) == (1, 0)

    def test_a_correction_cannot_move_a_job_to_another_allocation(
        self, allocation, alice, bob, gpu, dana, project, cluster
    ):
        record(allocation.cluster, usage(allocation, bob, gpu, "1", 10))
        request = services.allocation_request_create(
            actor=alice,
            project=project,
            cluster=cluster,
            name="other",
            resources=[gpu],
            su_amount="100",
            start=allocation.start,
            end=allocation.end,
            justification="More",
        )
        services.change_request_approve(actor=dana, request=request)
        other = request.allocation
        services.membership_add(actor=alice, allocation=other, user=bob)

        with unchanged(), pytest.raises(services.BatchRejected) as excinfo:
            record(allocation.cluster, usage(other, bob, gpu, "1", 11))
        assert excinfo.value.errors[0]["field"] == "allocation"
        assert "cannot move it" in excinfo.value.errors[0]["message"]

    def test_it_rejects_the_same_job_twice_in_a_batch(self, allocation, bob, gpu):
        with unchanged(), pytest.raises(services.BatchRejected) as excinfo:
            record(
                allocation.cluster,
                usage(allocation, bob, gpu, "7", 1),
                usage(allocation, bob, gpu, "7", 1),
            )
        assert rejected(excinfo) == [(1, "job_id")]
        assert "appears twice" in excinfo.value.errors[0]["message"]

    def test_a_job_may_charge_several_resources_and_users(self, allocation, alice, bob, gpu, cpu):
        result = record(
            allocation.cluster,
            usage(allocation, bob, gpu, "7", 1),
            usage(allocation, bob, cpu, "7", 1),
            usage(allocation, alice, gpu, "7", 1),
        )

        assert result.created == 3

    def test_one_bad_record_writes_nothing_and_every_bad_record_is_reported(
        self, allocation, alice, bob, charlie, gpu, tpu
    ):
        naive = dataclasses.replace(
            usage(allocation, bob, gpu, "5", 1), charged_at=dt.datetime(2026, 3, 1)
        )
        with unchanged(), pytest.raises(services.BatchRejected) as excinfo:
            record(
                allocation.cluster,
                usage(allocation, bob, gpu, "1", 1),
                usage(allocation, charlie, gpu, "2", 1),
                usage(allocation, alice, gpu, "3", 1),
                usage(allocation, bob, tpu, "4", 1),
                naive,
                usage(allocation, bob, gpu, "6", -1),
            )
        assert rejected(excinfo) == [
            (1, "user"),
            (3, "resource"),
            (4, "charged_at"),
            (5, "raw_unit_seconds"),
        ]
        assert excinfo.value.messages == [
            "record 1: charlie is not a member of folding-gpu",
            "record 3: allocation folding-gpu does not include TPU",
            "record 4: the charge time needs a time zone",
            "record 5: the raw amount cannot be negative",
        ]

    def test_a_correction_in_a_rejected_batch_writes_nothing(self, allocation, bob, charlie, gpu):
        record(allocation.cluster, usage(allocation, bob, gpu, "1", 10))
        with unchanged(), pytest.raises(services.BatchRejected) as excinfo:
            record(
                allocation.cluster,
                usage(allocation, bob, gpu, "1", 11),
                usage(allocation, charlie, gpu, "2", 1),
            )
        assert rejected(excinfo) == [(1, "user")]

    def test_usage_at_a_time_no_rate_covers_names_the_resource_and_time(self, allocation, bob, gpu):
        before_any_rate = dt.datetime(2024, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
        with unchanged(), pytest.raises(services.BatchRejected) as excinfo:
            record(allocation.cluster, usage(allocation, bob, gpu, "1", 1, when=before_any_rate))
        assert excinfo.value.errors == [
            {
                "index": 0,
                "field": "charged_at",
                "message": "no rate for GPU H200 on gpu1 at 2024-12-31 23:59:59 UTC",
            }
        ]

    def test_usage_after_a_closed_window_has_no_rate(self, allocation, bob, gpu, dana):
        services.rate_close(actor=dana, rate=gpu.rates.get(), end=MAR)
        with unchanged(), pytest.raises(services.BatchRejected, match="no rate for GPU H200"):
            record(allocation.cluster, usage(allocation, bob, gpu, "1", 1, when=MAR))

    def test_it_states_the_time_in_utc(self, allocation, bob, gpu):
        eastern = dt.timezone(dt.timedelta(hours=-5))
        when = dt.datetime(2024, 6, 1, 7, 0, tzinfo=eastern)
        with pytest.raises(services.BatchRejected, match="at 2024-06-01 12:00:00 UTC"):
            record(allocation.cluster, usage(allocation, bob, gpu, "1", 1, when=when))

    def test_it_refuses_a_non_member(self, allocation, charlie, gpu):
        with unchanged(), pytest.raises(services.BatchRejected) as excinfo:
            record(allocation.cluster, usage(allocation, charlie, gpu, "1", 1))
        assert rejected(excinfo) == [(0, "user")]

    def test_it_records_usage_of_a_removed_member(self, allocation, alice, bob, gpu):
        # Usage is a fact: the job ran, so it is charged even after the member left.
        services.membership_remove(
            actor=alice, membership=Membership.objects.get(allocation=allocation, user=bob)
        )

        assert record(allocation.cluster, usage(allocation, bob, gpu, "1", 1)).created == 1

    def test_it_refuses_a_resource_not_in_the_allocation(self, allocation, bob, tpu):
        with unchanged(), pytest.raises(services.BatchRejected) as excinfo:
            record(allocation.cluster, usage(allocation, bob, tpu, "1", 1))
        assert rejected(excinfo) == [(0, "resource")]

    def test_it_refuses_usage_reported_by_another_cluster(self, allocation, bob, gpu):
        other = Cluster.objects.create(name="cpu2")
        with unchanged(), pytest.raises(services.BatchRejected) as excinfo:
            record(other, usage(allocation, bob, gpu, "1", 1))
        assert excinfo.value.errors[0]["message"] == "allocation folding-gpu is not on cpu2"

    @pytest.mark.parametrize("raw", [1.5, "NaN", "1.0001", "many"])
    def test_it_refuses_a_raw_amount_that_is_not_exact(self, allocation, bob, gpu, raw):
        rec = dataclasses.replace(usage(allocation, bob, gpu, "1", 1), raw_unit_seconds=raw)
        with unchanged(), pytest.raises(services.BatchRejected) as excinfo:
            record(allocation.cluster, rec)
        assert rejected(excinfo) == [(0, "raw_unit_seconds")]

    def test_it_refuses_a_charge_too_large_to_store(self, allocation, bob, gpu):
        # 10**20 GPU-seconds at 2 SU per GPU-hour is about 5.6 * 10**16 SUs, more than an SU
        # amount can hold: an importer bug, refused as such rather than as a database error.
        rec = dataclasses.replace(
            usage(allocation, bob, gpu, "1", 1), raw_unit_seconds=Decimal(10) ** 20
        )
        with unchanged(), pytest.raises(services.BatchRejected) as excinfo:
            record(allocation.cluster, rec)
        assert rejected(excinfo) == [(0, "raw_unit_seconds")]

    def test_it_refuses_a_job_that_ends_before_it_starts(self, allocation, bob, gpu):
        rec = dataclasses.replace(
            usage(allocation, bob, gpu, "1", 1), started_at=MAR, ended_at=MAR - SECOND
        )
        with unchanged(), pytest.raises(services.BatchRejected) as excinfo:
            record(allocation.cluster, rec)
        assert rejected(excinfo) == [(0, "ended_at")]

    @pytest.mark.parametrize("field", ["started_at", "ended_at"])
    def test_it_refuses_job_times_without_a_time_zone(self, allocation, bob, gpu, field):
        times = {"started_at": MAR - dt.timedelta(hours=1), "ended_at": MAR}
        times[field] = dt.datetime(2026, 3, 1)
        rec = dataclasses.replace(usage(allocation, bob, gpu, "1", 1), **times)
        with unchanged(), pytest.raises(services.BatchRejected) as excinfo:
            record(allocation.cluster, rec)
        assert rejected(excinfo) == [(0, field)]

    def test_it_records_job_times(self, allocation, bob, gpu):
        rec = dataclasses.replace(
            usage(allocation, bob, gpu, "1", 1),
            started_at=MAR - dt.timedelta(hours=1),
            ended_at=MAR,
        )

        record(allocation.cluster, rec)

        charge = Usage.objects.get()
        assert (charge.started_at, charge.ended_at) == (MAR - dt.timedelta(hours=1), MAR)

    def test_overdrawing_usage_is_recorded(self, allocation, bob, gpu):
        # 600 GPU-hours = 1,200 SUs: past bob's 300 SU cap and the 1,000 SU budget.
        result = record(allocation.cluster, usage(allocation, bob, gpu, "1", 600))

        assert result.su_charged == 1200
        allocation.refresh_from_db()
        assert (allocation.su_used, allocation.su_remaining, allocation.is_overdrawn) == (
            1200,
            -200,
            True,
        )
        assert Membership.objects.get(allocation=allocation, user=bob).su_used == 1200

    def test_maintained_totals_equal_the_sums_of_records(
        self, allocation, alice, bob, gpu, cpu, pending_request
    ):
        for batch in range(3):
            record(
                allocation.cluster,
                *(
                    usage(allocation, who, res, f"{batch}-{i}", Decimal("0.0137") * (i + 1))
                    for i, (who, res) in enumerate(
                        [(alice, gpu), (bob, gpu), (alice, cpu), (bob, cpu)] * 3
                    )
                ),
            )

        allocation.refresh_from_db()
        charged = Usage.objects.filter(allocation=allocation).aggregate(s=Sum("su_amount"))["s"]
        assert allocation.su_used == Decimal(charged).quantize(Decimal("0.0001")) > 0
        for member in Membership.objects.filter(allocation=allocation):
            mine = Usage.objects.filter(allocation=allocation, user=member.user)
            assert member.su_used == sum(mine.values_list("su_amount", flat=True))
        assert ledger_drift() == []

    def test_a_batch_can_charge_several_allocations(self, allocation, alice, bob, gpu, dana):
        second = services.allocation_request_create(
            actor=alice,
            project=allocation.project,
            cluster=allocation.cluster,
            name="second",
            resources=[gpu],
            su_amount="10",
            start=START,
            end=END,
            justification="More",
        )
        other = second.allocation

        result = record(
            allocation.cluster,
            usage(allocation, bob, gpu, "1", 1),
            usage(other, alice, gpu, "2", 2),
        )

        assert result.su_charged == 6
        assert Allocation.objects.get(pk=allocation.pk).su_used == 2
        assert Allocation.objects.get(pk=other.pk).su_used == 4

    def test_a_single_record_is_a_batch_of_one(self, allocation, bob, gpu):
        result = services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, bob, gpu, "1", 1)
        )

        assert result == services.UsageBatchResult(created=1, duplicates=0, su_charged=2)

    def test_the_number_of_queries_does_not_grow_with_the_batch(self, allocation, bob, gpu):
        cluster = allocation.cluster

        def queries(first_job: int, size: int) -> int:
            batch = [usage(allocation, bob, gpu, str(first_job + i), 1) for i in range(size)]
            with CaptureQueriesContext(connection) as ctx:
                record(cluster, *batch)
            return len(ctx.captured_queries)

        assert queries(0, 2) == queries(100, 20) == queries(200, 2)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs row locks (PostgreSQL)")
@pytest.mark.django_db(transaction=True)
def test_the_same_batch_sent_twice_at_once_is_charged_once(allocation, alice, bob, gpu, cpu):
    cluster = allocation.cluster
    batch = [usage(allocation, who, gpu, str(i), 1) for i, who in enumerate([alice, bob] * 5)]

    outcomes = concurrently(lambda: record(cluster, *batch), lambda: record(cluster, *batch))

    assert sorted((o.created, o.duplicates) for o in outcomes) == [(0, 10), (10, 0)]
    assert Allocation.objects.get(pk=allocation.pk).su_used == 20
    assert ledger_drift() == []


class TestRatesChangedMeanwhile:
    """A rate corrected or closed by a transaction that commits after a batch read its
    rates and before the batch locks them (simulated here by changing the rate at that
    point): the batch charges what the locked rate says."""

    @pytest.fixture
    def meanwhile(self, monkeypatch):
        def arrange(change):
            real = services.store_for

            def store_for(cluster):
                change()
                return real(cluster)

            monkeypatch.setattr(services, "store_for", store_for)

        return arrange

    def test_a_rate_corrected_meanwhile_is_charged_at_its_new_value(
        self, allocation, bob, gpu, meanwhile
    ):
        meanwhile(lambda: gpu.rates.update(su_per_unit_hour=3))

        result = record(allocation.cluster, usage(allocation, bob, gpu, "1", 2))

        assert (result.created, result.su_charged) == (1, 6)
        assert Usage.objects.get().su_amount == 6
        allocation.refresh_from_db()
        assert allocation.su_used == 6

    def test_a_rate_closed_meanwhile_rejects_what_it_no_longer_covers(
        self, allocation, bob, gpu, meanwhile
    ):
        meanwhile(lambda: gpu.rates.update(end=MAR))

        with unchanged(), pytest.raises(services.BatchRejected) as excinfo:
            record(
                allocation.cluster,
                usage(allocation, bob, gpu, "1", 1, when=MAR - SECOND),
                usage(allocation, bob, gpu, "2", 1, when=MAR),
            )
        assert excinfo.value.errors == [
            {
                "index": 1,
                "field": "charged_at",
                "message": "the rate window for GPU H200 was closed meanwhile",
            }
        ]
