import datetime as dt
import threading
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from allocations import services
from allocations.admission import (
    AdmissionRefused,
    Reason,
    admission_check,
    hold_create,
    hold_release,
    holds_expire,
)
from allocations.ledger import ledger_drift
from allocations.models import Allocation, Hold, Membership, Status, Usage
from tests.allocations.dbstate import in_thread, unchanged, wait_until_blocked
from tests.conftest import NOW, usage

HOUR = dt.timedelta(hours=1)


@pytest.fixture
def clock(monkeypatch):
    """A settable clock: holds are created and expired at 'now'."""

    class Clock:
        now = NOW

    monkeypatch.setattr(timezone, "now", lambda: Clock.now)
    return Clock


def hold(allocation, user, job_id, estimate_su=None, **kwargs):
    if estimate_su is not None:
        kwargs["estimate_su"] = estimate_su
    created, _ = hold_create(
        cluster=allocation.cluster,
        actor=None,
        username=user.username,
        account=allocation.name,
        resource=kwargs.pop("resource", "GPU H200"),
        job_id=job_id,
        **kwargs,
    )
    return created


def balances(allocation, *users):
    """(budget, used, held, remaining) of the allocation, then (used, held) of each user."""
    allocation = Allocation.objects.get(pk=allocation.pk)
    members = [Membership.objects.get(allocation=allocation, user=u) for u in users]
    return (
        allocation.su_budget,
        allocation.su_used,
        allocation.su_held,
        allocation.su_remaining,
    ), [(m.su_used, m.su_held) for m in members]


def refused(excinfo) -> Reason:
    return excinfo.value.admission.reason


class TestHoldCreate:
    def test_a_hold_reserves_its_estimate(self, clock, allocation, alice, bob):
        created = hold(allocation, bob, "101", "250")

        assert (created.state, created.su_amount, created.job_id, created.user) == (
            "OPEN",
            250,
            "101",
            bob,
        )
        assert (created.created, created.closed_at) == (NOW, None)
        # No wall time: the hold lasts HOLD_DEFAULT_TTL_HOURS.
        assert created.expires_at == NOW + 168 * HOUR
        assert balances(allocation, alice, bob) == ((1000, 0, 250, 750), [(0, 0), (0, 250)])
        assert admission_check(
            cluster=allocation.cluster,
            username="bob",
            account=allocation.name,
            resource="GPU H200",
            estimate_su="0",
        ).member_remaining == Decimal(50)
        assert ledger_drift() == []

    def test_a_hold_given_as_count_and_wall_time_lasts_the_wall_time_plus_grace(
        self, clock, allocation, bob
    ):
        created = hold(allocation, bob, "101", count="4", wall_seconds=3600)

        assert created.su_amount == 8  # 4 GPU-hours at 2 SU
        assert created.expires_at == NOW + HOUR + 24 * HOUR
        assert ledger_drift() == []

    def test_a_wall_time_written_as_a_decimal_string_is_accepted(self, clock, allocation, bob):
        created = hold(allocation, bob, "101", count="4", wall_seconds="3600.0")

        assert (created.su_amount, created.expires_at) == (8, NOW + 25 * HOUR)

    def test_a_very_long_wall_time_on_a_free_resource_is_refused_not_crashed(
        self, clock, allocation, bob, dana, gpu
    ):
        services.rate_close(actor=dana, rate=gpu.rates.get(), end=NOW - HOUR)
        services.rate_add(actor=dana, resource=gpu, su_per_unit_hour="0.000001", start=NOW - HOUR)

        with unchanged(), pytest.raises(ValidationError) as excinfo:
            hold(allocation, bob, "101", count="1", wall_seconds="999999999999")

        assert "wall_seconds" in excinfo.value.message_dict

    def test_a_hold_beyond_the_allocation_remaining_is_refused(self, clock, allocation, alice):
        hold(allocation, alice, "101", "800")

        with unchanged(), pytest.raises(AdmissionRefused) as excinfo:
            hold(allocation, alice, "102", "200.0001")
        assert refused(excinfo) == Reason.ALLOCATION_EXHAUSTED

        hold(allocation, alice, "103", "200")
        assert balances(allocation, alice) == ((1000, 0, 1000, 0), [(0, 1000)])
        assert ledger_drift() == []

    def test_a_hold_beyond_the_members_cap_is_refused(self, clock, allocation, alice, bob):
        hold(allocation, bob, "101", "250")

        with unchanged(), pytest.raises(AdmissionRefused) as excinfo:
            hold(allocation, bob, "102", "50.0001")
        assert refused(excinfo) == Reason.MEMBER_CAP_EXHAUSTED

        # alice has no cap: bob's hold counts against her only through the pool.
        hold(allocation, alice, "103", "750")
        with pytest.raises(AdmissionRefused) as excinfo:
            hold(allocation, bob, "104", "0.0001")
        assert refused(excinfo) == Reason.ALLOCATION_EXHAUSTED
        assert balances(allocation, alice, bob) == ((1000, 0, 1000, 0), [(0, 750), (0, 250)])
        assert ledger_drift() == []

    def test_a_job_has_one_open_hold_and_a_second_changes_nothing(
        self, clock, allocation, alice, bob
    ):
        hold(allocation, bob, "101", "10")

        with unchanged(), pytest.raises(AdmissionRefused) as excinfo:
            hold(allocation, alice, "101", "10")

        assert refused(excinfo) == Reason.HOLD_EXISTS
        assert str(excinfo.value.messages[0]) == "This job already has an open hold."
        assert ledger_drift() == []

    def test_a_scheduler_retrying_a_large_hold_is_told_the_hold_exists(
        self, clock, allocation, alice
    ):
        hold(allocation, alice, "101", "600")

        # The retry must not be judged against the SUs its own first attempt holds.
        with unchanged(), pytest.raises(AdmissionRefused) as excinfo:
            hold(allocation, alice, "101", "600")

        assert refused(excinfo) == Reason.HOLD_EXISTS

    def test_a_job_may_be_held_again_once_its_hold_is_released(self, clock, allocation, bob):
        hold_release(hold=hold(allocation, bob, "101", "10"))

        again = hold(allocation, bob, "101", "20")

        assert Hold.objects.filter(job_id="101").count() == 2
        assert balances(allocation, bob)[1] == [(0, again.su_amount)]
        assert ledger_drift() == []

    @pytest.mark.parametrize(
        ("username", "account", "resource", "reason"),
        [
            ("nobody", "folding-gpu", "GPU H200", Reason.UNKNOWN_USER),
            ("bob", "nope", "GPU H200", Reason.UNKNOWN_ALLOCATION),
            ("bob", "folding-gpu", "Quantum", Reason.UNKNOWN_RESOURCE),
            ("charlie", "folding-gpu", "GPU H200", Reason.NOT_A_MEMBER),
        ],
    )
    def test_it_refuses_names_that_do_not_resolve(
        self, clock, allocation, charlie, username, account, resource, reason
    ):
        with unchanged(), pytest.raises(AdmissionRefused) as excinfo:
            hold_create(
                cluster=allocation.cluster,
                actor=None,
                username=username,
                account=account,
                resource=resource,
                job_id="101",
                estimate_su="1",
            )

        assert refused(excinfo) == reason

    def test_it_refuses_a_frozen_project(self, clock, allocation, bob, dana):
        services.project_set_status(
            actor=dana, project=allocation.project, status=Status.INACTIVE, reason="Audit"
        )

        with unchanged(), pytest.raises(AdmissionRefused) as excinfo:
            hold(allocation, bob, "101", "1")

        assert refused(excinfo) == Reason.PROJECT_INACTIVE

    @pytest.mark.parametrize(
        ("job_id", "estimate", "field"),
        [
            ("101", {"estimate_su": "0"}, "estimate_su"),
            ("101", {"estimate_su": "-1"}, "estimate_su"),
            ("101", {"estimate_su": "NaN"}, "estimate_su"),
            ("101", {"estimate_su": 1.5}, "estimate_su"),
            ("", {"estimate_su": "1"}, "job_id"),
            ("   ", {"estimate_su": "1"}, "job_id"),
            ("9" * 65, {"estimate_su": "1"}, "job_id"),
        ],
    )
    def test_it_refuses_a_bad_job_id_or_estimate(
        self, clock, allocation, bob, job_id, estimate, field
    ):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            hold(allocation, bob, job_id, **estimate)

        assert list(excinfo.value.message_dict) == [field]


class TestHoldRelease:
    def test_releasing_gives_the_sus_back(self, clock, allocation, alice, bob):
        created = hold(allocation, bob, "101", "250")
        clock.now = NOW + HOUR

        released = hold_release(hold=created)

        assert (released.state, released.closed_at) == ("RELEASED", NOW + HOUR)
        stored = Hold.objects.get(pk=created.pk)
        assert (stored.state, stored.closed_at) == ("RELEASED", NOW + HOUR)
        assert balances(allocation, alice, bob) == ((1000, 0, 0, 1000), [(0, 0), (0, 0)])
        assert ledger_drift() == []

    def test_releasing_twice_is_refused_and_changes_nothing(self, clock, allocation, bob):
        created = hold(allocation, bob, "101", "250")
        hold_release(hold=created)

        with unchanged(), pytest.raises(ValidationError, match="already released"):
            hold_release(hold=Hold.objects.get(pk=created.pk))
        # A stale copy that still says OPEN gives nothing back either.
        with unchanged(), pytest.raises(ValidationError, match="already released"):
            hold_release(hold=created)
        assert balances(allocation, bob) == ((1000, 0, 0, 1000), [(0, 0)])
        assert ledger_drift() == []

    def test_it_locks_only_the_allocation_row(self, clock, allocation, bob):
        if connection.vendor != "postgresql":
            pytest.skip("row locks are PostgreSQL's")
        created = hold(allocation, bob, "101", "250")
        other = hold(allocation, bob, "102", "10")
        clock.now = NOW + 200 * HOUR

        with CaptureQueriesContext(connection) as queries:
            hold_release(hold=created)
            holds_expire()

        locking = [q["sql"] for q in queries if "FOR UPDATE" in q["sql"]]
        assert len(locking) == 2
        # Locking the cluster row as well would queue every writer on the cluster.
        assert all('"allocations_cluster"' not in sql for sql in locking), locking
        assert Hold.objects.get(pk=other.pk).state == "EXPIRED"

    def test_holds_released_in_any_order_leave_exactly_nothing_held(self, clock, allocation, alice):
        # In binary floating point 3.2076 + 2.3407 - 3.2076 - 2.3407 is -4.4e-16.
        first = hold(allocation, alice, "101", "3.2076")
        second = hold(allocation, alice, "102", "2.3407")

        hold_release(hold=first)
        hold_release(hold=second)

        assert balances(allocation, alice) == ((1000, 0, 0, 1000), [(0, 0)])
        assert ledger_drift() == []


class TestSettlementByUsage:
    def test_the_jobs_usage_settles_its_hold(self, clock, allocation, alice, bob, gpu):
        created = hold(allocation, bob, "101", "50")
        other = hold(allocation, alice, "102", "30")

        services.usage_record_batch(
            cluster=allocation.cluster, records=[usage(allocation, bob, gpu, "101", 10)]
        )

        settled = Hold.objects.get(pk=created.pk)
        assert (settled.state, settled.closed_at) == ("SETTLED", NOW)
        assert Hold.objects.get(pk=other.pk).state == "OPEN"
        assert Usage.objects.get(job_id="101").su_amount == 20
        # The hold's 50 SUs are given back; the usage's 20 are charged.
        assert balances(allocation, alice, bob) == ((1000, 20, 30, 950), [(0, 30), (20, 0)])
        assert ledger_drift() == []

    def test_usage_above_the_estimate_is_still_charged_in_full(self, clock, allocation, bob, gpu):
        hold(allocation, bob, "101", "5")

        services.usage_record_batch(
            cluster=allocation.cluster, records=[usage(allocation, bob, gpu, "101", 10)]
        )

        assert balances(allocation, bob) == ((1000, 20, 0, 980), [(20, 0)])
        assert ledger_drift() == []

    def test_a_settled_hold_cannot_be_released(self, clock, allocation, bob, gpu):
        created = hold(allocation, bob, "101", "50")
        services.usage_record_batch(
            cluster=allocation.cluster, records=[usage(allocation, bob, gpu, "101", 10)]
        )

        with unchanged(), pytest.raises(ValidationError, match="already settled by usage"):
            hold_release(hold=created)

    def test_the_same_usage_reported_again_settles_nothing_more(self, clock, allocation, bob, gpu):
        hold(allocation, bob, "101", "50")
        record = usage(allocation, bob, gpu, "101", 10)
        services.usage_record_batch(cluster=allocation.cluster, records=[record])

        with unchanged():
            services.usage_record_batch(cluster=allocation.cluster, records=[record])

        assert ledger_drift() == []


class TestHoldsExpire:
    def test_it_releases_only_stale_holds_and_a_second_run_changes_nothing(
        self, clock, allocation, alice, bob
    ):
        short = hold(allocation, bob, "101", count="4", wall_seconds=3600)  # expires at +25h
        long = hold(allocation, alice, "102", "100")  # expires at +168h

        clock.now = NOW + 25 * HOUR
        assert holds_expire() == 0  # exactly at its expiry a hold is not yet stale

        clock.now = NOW + 26 * HOUR
        assert holds_expire() == 1
        assert Hold.objects.get(pk=short.pk).state == "EXPIRED"
        assert Hold.objects.get(pk=short.pk).closed_at == NOW + 26 * HOUR
        assert Hold.objects.get(pk=long.pk).state == "OPEN"
        assert balances(allocation, alice, bob) == ((1000, 0, 100, 900), [(0, 100), (0, 0)])

        with unchanged():
            assert holds_expire() == 0

        clock.now = NOW + 169 * HOUR
        assert holds_expire() == 1
        assert balances(allocation, alice, bob) == ((1000, 0, 0, 1000), [(0, 0), (0, 0)])
        assert ledger_drift() == []

    def test_it_leaves_released_and_settled_holds_alone(self, clock, allocation, bob, gpu):
        hold_release(hold=hold(allocation, bob, "101", "10"))
        hold(allocation, bob, "102", "10")
        services.usage_record_batch(
            cluster=allocation.cluster, records=[usage(allocation, bob, gpu, "102", 1)]
        )
        clock.now = NOW + 1000 * HOUR

        with unchanged():
            assert holds_expire() == 0

        assert sorted(Hold.objects.values_list("state", flat=True)) == ["RELEASED", "SETTLED"]
        assert ledger_drift() == []


@pytest.mark.django_db(transaction=True)
class TestHoldBesideAUsageBatch:
    def test_a_hold_and_a_usage_batch_on_one_allocation_do_not_deadlock(
        self, clock, allocation, bob, gpu, monkeypatch
    ):
        if connection.vendor != "postgresql":
            pytest.skip("row locks are PostgreSQL's")
        locked, go = threading.Event(), threading.Event()
        create = Hold.objects.create

        def create_when_told(**kwargs):
            # The hold has locked its allocation and membership and is about to insert.
            locked.set()
            assert go.wait(timeout=30)
            return create(**kwargs)

        monkeypatch.setattr(Hold.objects, "create", create_when_told)
        holding, _ = in_thread(lambda: hold(allocation, bob, "101", "10"))
        assert locked.wait(timeout=30)
        batch, pid = in_thread(
            lambda: services.usage_record_batch(
                cluster=allocation.cluster, records=[usage(allocation, bob, gpu, "99", 1)]
            )
        )
        wait_until_blocked(pid, batch)
        go.set()
        outcomes = [holding.result(timeout=30), batch.result(timeout=30)]

        assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
        assert Hold.objects.get().state == "OPEN"
        assert Usage.objects.get().job_id == "99"
        assert ledger_drift() == []
