import datetime as dt
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from allocations import services
from allocations.adjustments import rate_correct, usage_refund
from allocations.models import Usage, UsageDaily
from allocations.rollups import (
    rollup_keys_for,
    rollups_add,
    rollups_drift,
    rollups_refresh,
    rollups_refresh_all,
    rollups_touched,
)
from allocations.tasks import refresh_all_rollups_task, refresh_rollups_task
from tests.conftest import usage

MAR1 = dt.date(2026, 3, 1)
MAR2 = dt.date(2026, 3, 2)


def at(day: dt.date, hour=12, minute=0, second=0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=dt.UTC)


def charge(allocation, *records):
    return services.usage_record_batch(cluster=allocation.cluster, records=list(records))


def rows(allocation) -> list[tuple]:
    return sorted(
        (day, user, resource, su, raw, jobs)
        for day, user, resource, su, raw, jobs in UsageDaily.objects.filter(
            allocation=allocation
        ).values_list("day", "user__username", "resource__name", "su", "raw", "jobs")
    )


@pytest.fixture
def charged(allocation, alice, bob, gpu, cpu):
    charge(
        allocation,
        usage(allocation, bob, gpu, "1", 10, at(MAR1, 1)),  # 20 SU
        usage(allocation, bob, gpu, "2", 5, at(MAR1, 23, 59, 59)),  # 10 SU, still Mar 1
        usage(allocation, bob, gpu, "3", 1, at(MAR2, 0)),  # 2 SU, Mar 2 from midnight
        usage(allocation, alice, cpu, "4", 100, at(MAR2, 8)),  # 1 SU
    )
    return allocation


class TestRollupsRefresh:
    def test_it_sums_usage_per_member_resource_and_utc_day(self, charged):
        rollups_refresh(allocation_ids=[charged.pk], days=[MAR1, MAR2])

        assert rows(charged) == [
            (MAR1, "bob", "GPU H200", Decimal("30"), Decimal("54000"), 2),
            (MAR2, "alice", "CPU", Decimal("1"), Decimal("360000"), 1),
            (MAR2, "bob", "GPU H200", Decimal("2"), Decimal("3600"), 1),
        ]
        assert rollups_drift() == []

    def test_it_recomputes_only_the_days_asked_for(self, charged):
        UsageDaily.objects.all().delete()  # as if lost; the batch had written them

        rollups_refresh(allocation_ids=[charged.pk], days=[MAR2])

        assert {day for day, *_ in rows(charged)} == {MAR2}

    def test_running_it_twice_changes_nothing(self, charged):
        rollups_refresh(allocation_ids=[charged.pk], days=[MAR1, MAR2])
        first = rows(charged)
        rollups_refresh(allocation_ids=[charged.pk], days=[MAR1, MAR2])

        assert rows(charged) == first
        assert UsageDaily.objects.count() == 3

    def test_a_day_without_usage_any_more_loses_its_rows(self, charged):
        rollups_refresh_all()
        Usage.objects.filter(job_id="4").update(charged_at=at(MAR1, 9))

        rollups_refresh(allocation_ids=[charged.pk], days=[MAR1, MAR2])

        assert [(d, u) for d, u, *_ in rows(charged)] == [
            (MAR1, "alice"),
            (MAR1, "bob"),
            (MAR2, "bob"),
        ]

    def test_its_query_count_does_not_grow_with_the_usage(self, allocation, bob, gpu):
        def queries_for(n: int, day: dt.date) -> int:
            charge(
                allocation,
                *[usage(allocation, bob, gpu, f"{day}-{i}", 1, at(day, i % 24)) for i in range(n)],
            )
            with CaptureQueriesContext(connection) as ctx:
                rollups_refresh(allocation_ids=[allocation.pk], days=[day])
            return len(ctx.captured_queries)

        assert queries_for(2, MAR1) == queries_for(200, MAR2)
        assert UsageDaily.objects.get(day=MAR2).jobs == 200


class TestRollupsTouched:
    def test_the_refresh_runs_after_the_commit(
        self, charged, monkeypatch, django_capture_on_commit_callbacks
    ):
        sent = []
        monkeypatch.setattr(refresh_rollups_task, "delay", sent.append)
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            rollups_touched(rollup_keys_for(Usage.objects.filter(job_id__in=["1", "4"])))

        assert sent == []
        (callback,) = callbacks
        callback()
        # One task for the touched keys, as JSON.
        assert sent == [[[charged.pk, "2026-03-01"], [charged.pk, "2026-03-02"]]]
        monkeypatch.undo()
        refresh_rollups_task.delay(sent[0])
        assert len(rows(charged)) == 3

    def test_a_broker_that_is_down_does_not_fail_the_writer(
        self, charged, monkeypatch, caplog, django_capture_on_commit_callbacks
    ):
        def down(*args, **kwargs):
            raise ConnectionError("broker unreachable")

        monkeypatch.setattr(refresh_rollups_task, "delay", down)
        UsageDaily.objects.all().delete()
        with django_capture_on_commit_callbacks(execute=True):
            rollups_touched([(charged.pk, MAR1)])

        assert "broker unreachable" in caplog.text
        assert not UsageDaily.objects.exists()

    def test_nothing_touched_enqueues_nothing(self, db, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks() as callbacks:
            rollups_touched([])
        assert callbacks == []

    def test_a_refund_takes_the_job_off_its_day(
        self, charged, dana, django_capture_on_commit_callbacks
    ):
        rollups_refresh_all()
        with django_capture_on_commit_callbacks(execute=True):
            usage_refund(actor=dana, cluster=charged.cluster, job_id="1", reason="Node failure")

        mar1 = UsageDaily.objects.get(allocation=charged, day=MAR1)
        assert (mar1.su, mar1.jobs) == (Decimal("10"), 2)
        assert rollups_drift() == []

    def test_a_rate_correction_re_rates_the_days_of_its_jobs(
        self, charged, dana, gpu, django_capture_on_commit_callbacks
    ):
        rollups_refresh_all()
        with django_capture_on_commit_callbacks(execute=True):
            rate_correct(actor=dana, rate=gpu.rates.get(), su_per_unit_hour="3", reason="Typo")

        assert UsageDaily.objects.get(allocation=charged, day=MAR1).su == Decimal("45")
        assert rollups_drift() == []

    def test_an_importer_correction_counts_the_latest_raw_amount(self, charged, bob, gpu):
        charge(charged, usage(charged, bob, gpu, "1", 4, at(MAR1, 1)))  # was 10 unit-hours

        rollups_refresh_all()

        mar1 = UsageDaily.objects.get(allocation=charged, day=MAR1)
        assert (mar1.su, mar1.raw, mar1.jobs) == (Decimal("18"), Decimal("32400"), 2)
        assert rollups_drift() == []


class TestRollupsDrift:
    def test_it_reports_a_changed_a_missing_and_a_stray_row(self, charged):
        rollups_refresh_all()
        UsageDaily.objects.filter(day=MAR1).update(su=Decimal("31"))
        UsageDaily.objects.filter(day=MAR2, user__username="alice").delete()
        stray = UsageDaily.objects.get(day=MAR2)
        stray.pk, stray.day = None, dt.date(2026, 3, 9)
        stray.save()

        drifts = rollups_drift()

        assert [(d.day, d.field) for d in drifts] == [
            (MAR1, "su"),
            (MAR2, "row"),
            (dt.date(2026, 3, 9), "row"),
        ]
        assert str(drifts[0]) == (
            f"allocation {charged.code} on 2026-03-01, bob / GPU H200: su is 31.0000, "
            "records say 30.0000"
        )
        assert drifts[1].stored == "absent"

    def test_the_full_refresh_repairs_it(self, charged):
        rollups_refresh_all()
        UsageDaily.objects.all().delete()
        assert rollups_drift() != []

        assert refresh_all_rollups_task.delay().get() == 3
        assert rollups_drift() == []

    def test_the_command_fails_on_drift_and_repairs_on_request(self, charged, capsys):
        UsageDaily.objects.all().delete()
        with pytest.raises(CommandError, match="3 rollup rows differ"):
            call_command("verify_rollups")

        call_command("verify_rollups", "--repair")

        assert "Rollups verified" in capsys.readouterr().out


class TestRefreshTask:
    def test_it_takes_json_keys(self, charged):
        UsageDaily.objects.all().delete()
        assert refresh_rollups_task.delay([[charged.pk, "2026-03-02"]]).get() == 2
        assert {day for day, *_ in rows(charged)} == {MAR2}


class TestUsageBatchesKeepRollups:
    """New charges add to their rollups in the batch's own transaction; corrections are
    recomputed on their job's day once the batch commits; a replay changes nothing."""

    def test_new_charges_reach_the_rollups_with_the_batch_and_enqueue_nothing(
        self, allocation, alice, bob, gpu, cpu, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks() as callbacks:
            charge(
                allocation,
                usage(allocation, bob, gpu, "1", 10, at(MAR1, 1)),
                usage(allocation, bob, gpu, "2", 5, at(MAR1, 23, 59, 59)),
                usage(allocation, alice, cpu, "3", 100, at(MAR2, 0)),
            )

        assert callbacks == []  # no refresh task: the rows moved with the batch
        assert rows(allocation) == [
            (MAR1, "bob", gpu.name, Decimal("30"), Decimal(54000), 2),
            (MAR2, "alice", cpu.name, Decimal("1"), Decimal(360000), 1),
        ]
        assert rollups_drift() == []

    def test_a_later_batch_adds_to_the_rows_already_there(self, charged, bob, gpu):
        rollups_refresh_all()
        before = {(d, u): (su, raw, jobs) for d, u, _, su, raw, jobs in rows(charged)}

        charge(charged, usage(charged, bob, gpu, "9", 1, at(MAR1, 5)))  # 2 SU on Mar 1

        after = {(d, u): (su, raw, jobs) for d, u, _, su, raw, jobs in rows(charged)}
        su, raw, jobs = before[(MAR1, "bob")]
        assert after[(MAR1, "bob")] == (su + 2, raw + 3600, jobs + 1)
        assert after[(MAR2, "bob")] == before[(MAR2, "bob")]
        assert rollups_drift() == []

    def test_rollups_add_adds_to_a_row_or_creates_it(self, charged, alice, bob, gpu, cpu):
        rollups_add(
            {
                (charged.pk, bob.pk, gpu.pk, MAR1): (Decimal("2"), Decimal("3600"), 1),
                (charged.pk, alice.pk, cpu.pk, MAR1): (Decimal("1"), Decimal("360000"), 1),
            }
        )

        assert rows(charged) == [
            (MAR1, "alice", cpu.name, Decimal("1"), Decimal(360000), 1),
            (MAR1, "bob", gpu.name, Decimal("32"), Decimal(57600), 3),
            (MAR2, "alice", cpu.name, Decimal("1"), Decimal(360000), 1),
            (MAR2, "bob", gpu.name, Decimal("2"), Decimal(3600), 1),
        ]

    def test_a_rejected_batch_leaves_the_rollups_as_they_were(self, charged, bob, gpu):
        rollups_refresh_all()
        before = rows(charged)

        with pytest.raises(services.BatchRejected):
            charge(
                charged,
                usage(charged, bob, gpu, "10", 1, at(MAR1, 6)),
                usage(charged, bob, gpu, "10", 1, at(MAR1, 6)),  # twice in one batch
            )

        assert rows(charged) == before

    def test_new_charges_and_corrections_reach_the_rollups(
        self, allocation, bob, gpu, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=True):
            charge(allocation, usage(allocation, bob, gpu, "1", 10, at(MAR1, 1)))
        assert rows(allocation) == [(MAR1, "bob", gpu.name, Decimal("20.0000"), Decimal(36000), 1)]

        # Reported again with another amount on a later day: a correction, on the job's day.
        with django_capture_on_commit_callbacks(execute=True):
            charge(allocation, usage(allocation, bob, gpu, "1", 4, at(MAR2, 1)))
        assert rows(allocation) == [(MAR1, "bob", gpu.name, Decimal("8.0000"), Decimal(14400), 1)]
        assert rollups_drift() == []

    def test_a_replay_enqueues_no_refresh(
        self, allocation, bob, gpu, django_capture_on_commit_callbacks
    ):
        record = usage(allocation, bob, gpu, "1", 10, at(MAR1, 1))
        charge(allocation, record)

        with django_capture_on_commit_callbacks() as callbacks:
            charge(allocation, record)

        assert callbacks == []
