import dataclasses
import datetime as dt
import threading
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from allocations import adjustments, services
from allocations.adjustments import rate_correct, rerate_usage, usage_refund
from allocations.admission import hold_create
from allocations.conversion import su_for
from allocations.ledger import ledger_drift
from allocations.models import (
    Allocation,
    Hold,
    Membership,
    RateCorrection,
    Usage,
    UsageAdjustment,
)
from allocations.tasks import expire_holds_task, rerate_usage_task
from tests.allocations.dbstate import db_state, in_thread, unchanged, waits_for_lock
from tests.conftest import usage

MAR = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def effective(job_id: str, **lookup) -> Decimal:
    """A usage record's charge as it stands: its su_amount plus its adjustments."""
    row = Usage.objects.get(job_id=job_id, **lookup)
    adjusted = row.adjustments.aggregate(total=Sum("su_delta"))["total"] or 0
    return row.su_amount + Decimal(adjusted).quantize(Decimal("0.0001"))


def used(allocation, user=None) -> Decimal:
    if user is None:
        return Allocation.objects.get(pk=allocation.pk).su_used
    return Membership.objects.get(allocation=allocation, user=user).su_used


def ledger_rows() -> dict:
    """The rows a re-rating may write or move (not the correction's own timestamp)."""
    state = db_state()
    return {
        label: state[label]
        for label in (
            "allocations.UsageAdjustment",
            "allocations.Allocation",
            "allocations.Membership",
            "allocations.Usage",
        )
    }


@pytest.fixture
def charged(allocation, alice, bob, gpu, cpu):
    """bob's job 1 (10 GPU-hours: 20 SU), alice's job 2 on both resources, and three
    small GPU jobs whose charges round (1, 2 and 5 GPU-seconds)."""
    services.usage_record_batch(
        cluster=allocation.cluster,
        records=[
            usage(allocation, bob, gpu, "1", 10),
            usage(allocation, alice, gpu, "2", "1.5"),
            usage(allocation, alice, cpu, "2", 100),
            *(
                dataclasses.replace(usage(allocation, bob, gpu, f"s{n}", 0), raw_unit_seconds=n)
                for n in (1, 2, 5)
            ),
        ],
    )
    return allocation


@pytest.fixture
def gpu_rate(gpu):
    return gpu.rates.get()


def correct(actor, rate, value, reason="Mis-keyed rate", **kwargs):
    return rate_correct(actor=actor, rate=rate, su_per_unit_hour=value, reason=reason, **kwargs)


class TestUsageRefund:
    def test_a_refund_writes_minus_the_net_charge_and_leaves_the_usage_row(
        self, charged, dana, bob
    ):
        rows = list(Usage.objects.order_by("pk").values())

        (refund,) = usage_refund(
            actor=dana, cluster=charged.cluster, job_id="1", reason="Node failure"
        )

        assert (refund.kind, refund.su_delta, refund.actor, refund.reason) == (
            "REFUND",
            -20,
            dana,
            "Node failure",
        )
        assert (refund.allocation_id, refund.user_id) == (charged.pk, bob.pk)
        assert list(Usage.objects.order_by("pk").values()) == rows
        assert effective("1") == 0
        assert used(charged, bob) == Decimal("0.0045")  # the three small jobs
        assert used(charged) == Decimal("4.0045")
        assert ledger_drift() == []

    def test_refunds_in_any_order_leave_exactly_nothing_used(self, allocation, dana, alice, gpu):
        # 3.2076 and 2.3407 SUs: in binary floating point their charges and refunds
        # would not cancel out (-4.4e-16).
        for job_id, gpu_hours in (("1", "1.6038"), ("2", "1.17035")):
            services.usage_record_batch(
                cluster=allocation.cluster,
                records=[usage(allocation, alice, gpu, job_id, gpu_hours)],
            )

        for job_id in ("1", "2"):
            usage_refund(actor=dana, cluster=allocation.cluster, job_id=job_id, reason="Lost")

        assert (used(allocation), used(allocation, alice)) == (0, 0)
        assert ledger_drift() == []

    def test_it_refunds_every_resource_of_a_job(self, charged, dana, alice):
        refunds = usage_refund(actor=dana, cluster=charged.cluster, job_id="2", reason="Preempted")

        assert sorted((r.usage.resource.name, r.su_delta) for r in refunds) == [
            ("CPU", -1),
            ("GPU H200", -3),
        ]
        assert used(charged, alice) == 0
        assert ledger_drift() == []

    def test_it_refunds_one_users_share_of_a_job(self, allocation, dana, alice, bob, gpu):
        services.usage_record_batch(
            cluster=allocation.cluster,
            records=[usage(allocation, alice, gpu, "7", 1), usage(allocation, bob, gpu, "7", 2)],
        )

        (refund,) = usage_refund(
            actor=dana, cluster=allocation.cluster, job_id="7", username="bob", reason="Preempted"
        )

        assert (refund.user, refund.su_delta) == (bob, -4)
        assert (used(allocation, alice), used(allocation, bob)) == (2, 0)
        assert ledger_drift() == []

    def test_a_second_refund_is_refused_and_changes_nothing(self, charged, dana):
        usage_refund(actor=dana, cluster=charged.cluster, job_id="1", reason="Node failure")

        with unchanged(), pytest.raises(ValidationError) as excinfo:
            usage_refund(actor=dana, cluster=charged.cluster, job_id="1", reason="Again")

        assert excinfo.value.message_dict == {"job_id": ["Job 1 has already been refunded."]}
        assert ledger_drift() == []

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
    def test_only_a_cluster_admin_may_refund(self, request, charged, who):
        actor = request.getfixturevalue(who)

        with unchanged(), pytest.raises(PermissionDenied, match="Only admins of gpu1"):
            usage_refund(actor=actor, cluster=charged.cluster, job_id="1", reason="Please")

    @pytest.mark.parametrize(
        ("job_id", "reason", "field"),
        [("1", "", "reason"), ("1", "   ", "reason"), ("404", "Node failure", "job_id")],
    )
    def test_it_refuses_a_missing_reason_or_an_unknown_job(
        self, charged, dana, job_id, reason, field
    ):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            usage_refund(actor=dana, cluster=charged.cluster, job_id=job_id, reason=reason)

        assert list(excinfo.value.message_dict) == [field]

    def test_a_refund_after_re_rating_returns_the_re_rated_charge(
        self, charged, dana, gpu_rate, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=True):
            correct(dana, gpu_rate, "3")
        assert effective("1") == 30

        (refund,) = usage_refund(actor=dana, cluster=charged.cluster, job_id="1", reason="Lost")

        assert refund.su_delta == -30
        assert effective("1") == 0
        assert ledger_drift() == []


class TestRateCorrect:
    def test_a_correction_re_rates_every_charge_made_at_the_rate(
        self, charged, dana, alice, bob, gpu_rate, django_capture_on_commit_callbacks
    ):
        originals = dict(Usage.objects.filter(rate=gpu_rate).values_list("job_id", "su_amount"))
        raws = dict(Usage.objects.filter(rate=gpu_rate).values_list("job_id", "raw_unit_seconds"))

        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            correction = correct(dana, gpu_rate, "3")

        # The re-rating is enqueued once (its chunks then enqueue their rollup refreshes).
        rerates = [c for c in callbacks if getattr(c, "func", None) == rerate_usage_task.delay]
        assert len(rerates) == 1
        correction.refresh_from_db()
        assert (correction.old_su_per_unit_hour, correction.new_su_per_unit_hour) == (2, 3)
        assert (correction.actor, correction.reason) == (dana, "Mis-keyed rate")
        assert correction.rerated_at is not None
        gpu_rate.refresh_from_db()
        assert gpu_rate.su_per_unit_hour == 3
        for job_id, raw in raws.items():
            assert effective(job_id, rate=gpu_rate) == su_for(raw, Decimal(3))
        # The original charges stay as they were; the change is in RERATE adjustments.
        assert (
            dict(Usage.objects.filter(rate=gpu_rate).values_list("job_id", "su_amount"))
            == originals
        )
        assert sorted(
            UsageAdjustment.objects.filter(kind="RERATE").values_list("usage__job_id", "su_delta")
        ) == [
            ("1", 10),
            ("2", Decimal("1.5")),
            ("s1", Decimal("0.0002")),  # 0.0006 -> 0.0008
            ("s2", Decimal("0.0006")),  # 0.0011 -> 0.0017
            ("s5", Decimal("0.0014")),  # 0.0028 -> 0.0042
        ]
        assert used(charged, bob) == Decimal("30.0067")
        assert used(charged, alice) == Decimal("5.5")  # 4.5 GPU + 1 CPU
        assert ledger_drift() == []

    def test_the_re_rating_runs_only_once_the_correction_is_committed(
        self, charged, dana, gpu_rate, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            correct(dana, gpu_rate, "3")

        assert not UsageAdjustment.objects.exists()
        callbacks[0]()
        assert UsageAdjustment.objects.filter(kind="RERATE").count() == 5

    def test_refunded_jobs_stay_refunded(
        self, charged, dana, gpu_rate, django_capture_on_commit_callbacks
    ):
        usage_refund(actor=dana, cluster=charged.cluster, job_id="1", reason="Node failure")

        with django_capture_on_commit_callbacks(execute=True):
            correct(dana, gpu_rate, "3")

        assert effective("1") == 0
        assert not UsageAdjustment.objects.filter(usage__job_id="1", kind="RERATE").exists()
        assert ledger_drift() == []

    def test_re_running_the_re_rating_writes_nothing_more(
        self, charged, dana, gpu_rate, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=True):
            correction = correct(dana, gpu_rate, "3")
        before = ledger_rows()

        assert rerate_usage(correction=correction) == 0
        assert rerate_usage_task(correction.pk) == 0

        assert ledger_rows() == before
        assert ledger_drift() == []

    def test_it_re_rates_in_chunks_without_missing_a_record(
        self, charged, dana, gpu_rate, monkeypatch, django_capture_on_commit_callbacks
    ):
        monkeypatch.setattr(adjustments, "RERATE_CHUNK", 2)

        with django_capture_on_commit_callbacks(execute=True):
            correct(dana, gpu_rate, "3")

        assert UsageAdjustment.objects.filter(kind="RERATE").count() == 5
        assert ledger_drift() == []

    def test_it_leaves_usage_charged_at_other_windows_alone(
        self, allocation, dana, bob, gpu, django_capture_on_commit_callbacks
    ):
        old = gpu.rates.get()
        services.rate_close(actor=dana, rate=old, end=MAR)
        services.rate_add(actor=dana, resource=gpu, su_per_unit_hour="3", start=MAR)
        services.usage_record_batch(
            cluster=allocation.cluster,
            records=[
                usage(allocation, bob, gpu, "before", 1, when=MAR - dt.timedelta(hours=1)),
                usage(allocation, bob, gpu, "after", 1, when=MAR + dt.timedelta(hours=1)),
            ],
        )

        with django_capture_on_commit_callbacks(execute=True):
            correct(dana, old, "2.5")

        assert (effective("before"), effective("after")) == (Decimal("2.5"), 3)
        assert ledger_drift() == []

    def test_correcting_back_restores_the_original_charges(
        self, charged, dana, gpu_rate, django_capture_on_commit_callbacks
    ):
        originals = dict(Usage.objects.values_list("pk", "su_amount"))

        with django_capture_on_commit_callbacks(execute=True):
            correct(dana, gpu_rate, "3")
        with django_capture_on_commit_callbacks(execute=True):
            correct(dana, gpu_rate, "2", reason="Back to the published rate")

        for pk, amount in originals.items():
            row = Usage.objects.get(pk=pk)
            assert effective(row.job_id, resource=row.resource) == amount
        assert RateCorrection.objects.count() == 2
        assert ledger_drift() == []

    def test_usage_recorded_after_a_correction_is_charged_at_the_new_value(
        self, allocation, dana, bob, gpu, gpu_rate, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=True):
            correction = correct(dana, gpu_rate, "3")
        services.usage_record_batch(
            cluster=allocation.cluster, records=[usage(allocation, bob, gpu, "late", 1)]
        )

        assert rerate_usage(correction=correction) == 0
        assert effective("late") == 3
        assert ledger_drift() == []

    def test_an_automated_correction_needs_no_actor(
        self, charged, gpu_rate, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=True):
            correction = correct(None, gpu_rate, "1")

        assert correction.actor is None
        assert effective("1") == 10
        assert ledger_drift() == []

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
    def test_only_a_cluster_admin_may_correct_a_rate(
        self, request, charged, gpu_rate, who, django_capture_on_commit_callbacks
    ):
        actor = request.getfixturevalue(who)

        with (
            django_capture_on_commit_callbacks() as callbacks,
            unchanged(),
            pytest.raises(PermissionDenied, match="Only admins of gpu1"),
        ):
            correct(actor, gpu_rate, "3")

        assert callbacks == []

    @pytest.mark.parametrize(
        ("value", "reason", "field"),
        [
            pytest.param("2", "Typo", "su_per_unit_hour", id="same-value"),
            pytest.param("2.000000", "Typo", "su_per_unit_hour", id="same-value-other-scale"),
            pytest.param("-1", "Typo", "su_per_unit_hour", id="negative"),
            pytest.param("abc", "Typo", "su_per_unit_hour", id="non-numeric"),
            pytest.param("NaN", "Typo", "su_per_unit_hour", id="NaN"),
            pytest.param(2.5, "Typo", "su_per_unit_hour", id="float"),
            pytest.param("2.0000001", "Typo", "su_per_unit_hour", id="too-many-places"),
            pytest.param("3", "  ", "reason", id="no-reason"),
        ],
    )
    def test_it_refuses_a_bad_correction_and_changes_nothing(
        self, charged, dana, gpu_rate, value, reason, field, django_capture_on_commit_callbacks
    ):
        with (
            django_capture_on_commit_callbacks() as callbacks,
            unchanged(),
            pytest.raises(ValidationError) as excinfo,
        ):
            correct(dana, gpu_rate, value, reason=reason)

        assert list(excinfo.value.message_dict) == [field]
        assert callbacks == []

    def test_it_locks_only_the_rate_row(self, charged, dana, gpu_rate):
        if connection.vendor != "postgresql":
            pytest.skip("row locks are PostgreSQL's")

        with CaptureQueriesContext(connection) as queries:
            correct(dana, gpu_rate, "3")

        (locking,) = [q["sql"] for q in queries if "FOR UPDATE" in q["sql"]]
        assert locking.endswith('FOR UPDATE OF "allocations_rate"'), locking

    def test_the_same_value_is_refused_with_a_clear_message(self, charged, dana, gpu_rate):
        with pytest.raises(ValidationError) as excinfo:
            correct(dana, gpu_rate, "2")

        assert excinfo.value.message_dict == {
            "su_per_unit_hour": ["The rate already has this value."]
        }


class TestTasks:
    def test_the_rerate_task_does_nothing_for_an_unknown_correction(self, charged):
        with unchanged():
            assert rerate_usage_task(987654) == 0

    def test_the_rerate_task_re_rates_a_correction_by_id(
        self, charged, dana, gpu_rate, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=False):
            correction = correct(dana, gpu_rate, "4")

        assert rerate_usage_task(correction.pk) == 5
        assert effective("1") == 40
        assert rerate_usage_task.name == "allocations.rerate_usage"
        assert ledger_drift() == []

    def test_the_expiry_task_releases_stale_holds(self, allocation, bob, monkeypatch):
        monkeypatch.setattr(timezone, "now", lambda: MAR)
        created, _ = hold_create(
            cluster=allocation.cluster,
            actor=None,
            username="bob",
            account=allocation.name,
            resource="GPU H200",
            job_id="101",
            estimate_su="10",
        )
        later = created.expires_at + dt.timedelta(seconds=1)
        monkeypatch.setattr(timezone, "now", lambda: later)

        assert expire_holds_task() == 1
        assert expire_holds_task() == 0
        assert Hold.objects.get().state == "EXPIRED"
        assert Allocation.objects.get(pk=allocation.pk).su_held == 0
        assert ledger_drift() == []


@pytest.mark.django_db(transaction=True)
class TestRerateBesideAUsageBatch:
    def test_re_rating_and_a_usage_batch_at_the_same_rate_do_not_deadlock(
        self, charged, dana, bob, gpu, gpu_rate, monkeypatch
    ):
        if connection.vendor != "postgresql":
            pytest.skip("row locks are PostgreSQL's")
        monkeypatch.setattr(rerate_usage_task, "delay_on_commit", lambda *args: None)
        correction = correct(dana, gpu_rate, "3")
        chunk_locked, go = threading.Event(), threading.Event()
        bulk_create = UsageAdjustment.objects.bulk_create

        def bulk_create_when_told(objs, *args, **kwargs):
            # The re-rating holds its chunk's locks and is about to write the adjustments.
            chunk_locked.set()
            assert go.wait(timeout=30)
            return bulk_create(objs, *args, **kwargs)

        monkeypatch.setattr(UsageAdjustment.objects, "bulk_create", bulk_create_when_told)
        rerating, _ = in_thread(lambda: rerate_usage(correction=correction))
        assert chunk_locked.wait(timeout=30)
        batch, pid = in_thread(
            lambda: services.usage_record_batch(
                cluster=charged.cluster, records=[usage(charged, bob, gpu, "99", 1)]
            )
        )
        waits_for_lock(pid, batch)
        go.set()
        outcomes = [rerating.result(timeout=30), batch.result(timeout=30)]

        assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
        assert effective("99") == 3  # charged at the corrected value
        assert effective("1") == 30
        assert ledger_drift() == []
