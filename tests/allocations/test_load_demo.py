"""load_demo builds the demo site through the services. The trace slice it replays is the
LANL CM-5 log of the Parallel Workloads Archive (https://www.cs.huji.ac.il/labs/parallel/workload/),
courtesy of Curt Canada: D. G. Feitelson, D. Tsafrir and D. Krakov, "Experience with using the
Parallel Workloads Archive", J. Parallel & Distributed Computing 74(10):2967-2982, Oct 2014."""

import datetime as dt
import io
from collections import defaultdict
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.db.models import F
from django.test import override_settings

from accounts.models import Organization, User
from accounts.roles import CLUSTER_ADMINS_GROUP
from allocations.demo.scenario import (
    ADMIN_PASSWORD,
    DEMO_PASSWORD,
    SAMPLE_CLUSTER_ADMIN,
    SAMPLE_PI,
    SPAN_DAYS,
)
from allocations.demo.swf import read_swf
from allocations.management.commands.load_demo import SLICE
from allocations.models import (
    Allocation,
    AllocationChange,
    ChangeRequest,
    ChangeRequestEvent,
    Cluster,
    Membership,
    MembershipChange,
    Project,
    Rate,
    Resource,
    Status,
    Usage,
)

TODAY = dt.date(2026, 3, 15)
ANCHOR = dt.datetime(2026, 3, 15, tzinfo=dt.UTC)
JOBS = 1500


def load(*args: str) -> str:
    out = io.StringIO()
    call_command("load_demo", "--today", TODAY.isoformat(), "--jobs", str(JOBS), *args, stdout=out)
    return out.getvalue()


def snapshot() -> dict:
    """Every demo row's content, without the keys and UUIDs a database hands out."""
    return {
        "users": sorted(
            User.objects.values_list(
                "username", "email", "organization__name", "is_staff", "date_joined"
            )
        ),
        "projects": sorted(
            Project.objects.values_list("title", "pi__username", "origination", "originated_id")
        ),
        "rates": sorted(
            Rate.objects.values_list("resource__name", "su_per_unit_hour", "start", "end")
        ),
        "allocations": sorted(
            Allocation.objects.values_list(
                "name", "status", "start", "end", "su_budget", "su_used", "created"
            )
        ),
        "changes": sorted(
            AllocationChange.objects.values_list(
                "allocation__name", "kind", "su_delta", "su_budget", "status", "end", "created"
            )
        ),
        "requests": sorted(
            ChangeRequest.objects.values_list(
                "allocation__name", "kind", "state", "su_delta", "su_approved", "created"
            )
        ),
        "events": sorted(
            ChangeRequestEvent.objects.values_list("request__allocation__name", "kind", "created")
        ),
        "memberships": sorted(
            Membership.objects.values_list(
                "allocation__name", "user__username", "status", "su_cap", "su_used"
            )
        ),
        "usage": sorted(
            Usage.objects.values_list(
                "job_id",
                "allocation__name",
                "user__username",
                "resource__name",
                "raw_unit_seconds",
                "su_amount",
                "charged_at",
                "recorded_at",
            )
        ),
    }


def python_sum(pairs) -> dict:
    # Summed here, not in SQL: SQLite sums decimals as floats.
    totals = defaultdict(Decimal)
    for key, amount in pairs:
        totals[key] += amount
    return totals


FAST_HASHING = override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"])


@pytest.fixture(scope="class")
def loaded(django_db_setup, django_db_blocker):
    """One load for the whole class (it takes seconds), rolled back after it."""
    with django_db_blocker.unblock(), FAST_HASHING, transaction.atomic():
        yield load()
        transaction.set_rollback(True)


@pytest.fixture
def demo(loaded, db):
    return loaded


class TestLoadDemo:
    def test_it_creates_organizations_people_and_projects(self, demo):
        assert Organization.objects.count() == 3
        assert 25 <= User.objects.count() <= 35
        assert 8 <= Project.objects.count() <= 12
        assert {p.origination for p in Project.objects.all()} == {"LOCAL", "ACCESS", "NAIRR"}
        assert all(p.originated_id for p in Project.objects.exclude(origination="LOCAL"))
        assert Project.objects.filter(managers__isnull=False).distinct().count() >= 5
        domains = defaultdict(set)
        for user in User.objects.select_related("organization"):
            domains[user.organization.name].add(user.email.split("@")[1])
            assert user.first_name and user.last_name
        assert len(domains) == 3 and all(len(d) == 1 for d in domains.values())

    def test_it_prints_logins_that_work(self, demo):
        admin = User.objects.get(username="admin")
        assert admin.is_staff and admin.is_superuser
        assert admin.check_password(ADMIN_PASSWORD)
        pi = User.objects.get(username=SAMPLE_PI)
        assert pi.pi_projects.exists() and pi.check_password(DEMO_PASSWORD)
        cluster_admin = User.objects.get(username=SAMPLE_CLUSTER_ADMIN)
        assert cluster_admin.administered_clusters.exists()
        assert cluster_admin.check_password(DEMO_PASSWORD)
        for login in (f"admin / {ADMIN_PASSWORD}", f"{SAMPLE_PI} / {DEMO_PASSWORD}"):
            assert login in demo
        assert f"{SAMPLE_CLUSTER_ADMIN} / {DEMO_PASSWORD}" in demo

    def test_it_creates_a_cpu_and_a_gpu_cluster_with_admins_and_capacity(self, demo):
        assert set(Resource.objects.values_list("name", "unit")) == {
            ("CPU", "core"),
            ("GPU H200", "GPU"),
            ("GPU RTX6000", "GPU"),
        }
        for cluster in Cluster.objects.all():
            assert cluster.admins.exists()
            assert cluster.su_capacity_per_month > 0
            # The admin site opens for them, as README's Roles describe a cluster admin.
            for admin in cluster.admins.all():
                assert admin.is_staff and not admin.is_superuser
                assert admin.groups.filter(name=CLUSTER_ADMINS_GROUP).exists()

    def test_it_changes_rates_in_the_middle_of_the_period(self, demo):
        for name in ("CPU", "GPU H200"):
            first, second = Rate.objects.filter(resource__name=name).order_by("start")
            assert first.end == second.start
            assert ANCHOR - dt.timedelta(days=SPAN_DAYS) < second.start < ANCHOR
            assert first.su_per_unit_hour != second.su_per_unit_hour
            # Usage is charged at the rate in force when the job ended.
            assert not Usage.objects.filter(rate=first, charged_at__gte=first.end).exists()
            assert Usage.objects.filter(rate=second).exists()

    def test_it_creates_allocations_in_every_status(self, demo):
        assert set(Allocation.objects.values_list("status", flat=True)) == set(Status.values)
        awaiting = Allocation.objects.get(
            status=Status.INACTIVE, change_requests__kind="NEW", change_requests__state="PENDING"
        )
        assert awaiting.su_budget == 0 and not awaiting.usage.exists()
        frozen = Allocation.objects.get(status=Status.INACTIVE, su_budget__gt=0)
        assert frozen.changes.filter(kind="ADMIN", status=Status.INACTIVE).exists()
        closed = Allocation.objects.get(status=Status.DELETED)
        assert closed.changes.filter(kind="EXPIRY", actor__isnull=True).exists()
        assert closed.end < TODAY

    def test_it_creates_requests_in_every_state(self, demo):
        assert set(ChangeRequest.objects.values_list("state", flat=True)) == set(
            ChangeRequest.State.values
        )
        changes = ChangeRequest.objects.filter(kind="CHANGE")
        assert changes.filter(su_delta__gt=0).exists()  # supplements
        assert changes.filter(requested_end__isnull=False).exists()  # extensions
        assert changes.exclude(requested_status="").exists()  # a status change
        assert ChangeRequestEvent.objects.filter(kind="COMMENTED").count() >= 5
        different = ChangeRequest.objects.filter(state="APPROVED").exclude(
            su_approved=F("su_delta")
        )
        assert different.count() >= 2
        assert all(r.decision_reason for r in different)

    def test_it_adds_members_with_and_without_caps_and_freezes_one(self, demo):
        members = Membership.objects.all()
        assert members.filter(su_cap__isnull=True).exists()
        assert members.filter(su_cap__isnull=False).exists()
        assert members.filter(status=Status.INACTIVE).count() == 1
        assert MembershipChange.objects.filter(kind="CAP").exists()
        for m in members.filter(su_cap__isnull=False).select_related("allocation"):
            assert m.su_cap <= m.allocation.su_budget

    def test_every_maintained_total_equals_its_records(self, demo):
        used = python_sum(Usage.objects.values_list("allocation_id", "su_amount"))
        deltas = python_sum(AllocationChange.objects.values_list("allocation_id", "su_delta"))
        for allocation in Allocation.objects.all():
            assert allocation.su_used == used[allocation.pk]
            assert allocation.su_budget == deltas[allocation.pk]
            assert allocation.su_budget == allocation.changes.last().su_budget
        by_member = python_sum(
            ((a, u), su)
            for a, u, su in Usage.objects.values_list("allocation", "user", "su_amount")
        )
        for m in Membership.objects.all():
            assert m.su_used == by_member[(m.allocation_id, m.user_id)]
        assert sum(used.values()) > 0

    def test_it_spreads_budgets_from_healthy_to_overdrawn(self, demo):
        funded = Allocation.objects.filter(su_budget__gt=0)
        shares = {a.name: a.su_used / a.su_budget for a in funded}
        assert sum(share < Decimal("0.75") for share in shares.values()) >= 3
        assert any(Decimal("0.9") < share <= 1 for share in shares.values())
        assert any(share > 1 for share in shares.values())
        soon = funded.filter(status=Status.ACTIVE, end__lte=TODAY + dt.timedelta(days=30))
        assert soon.exists()

    def test_it_charges_trace_jobs_from_the_six_months_before_today(self, demo):
        usage = Usage.objects.select_related("resource")
        assert 0.9 * JOBS <= usage.count() <= JOBS
        start = ANCHOR - dt.timedelta(days=SPAN_DAYS)
        assert not usage.exclude(charged_at__gte=start, charged_at__lt=ANCHOR).exists()
        numbers = {j.number for j in read_swf(SLICE).jobs}
        assert all(int(job_id) in numbers for job_id in usage.values_list("job_id", flat=True))
        assert usage.filter(resource__kind="GPU").exists()
        assert usage.filter(resource__kind="CPU").exists()
        assert f"usage rows:    {usage.count():,}" in demo

    def test_the_shipped_slice_parses_and_keeps_its_attribution(self):
        trace = read_swf(SLICE)
        assert SLICE.stat().st_size < 1_000_000
        assert trace.field("Acknowledge") == "Curt Canada"
        assert trace.field("Computer") == "Thinking Machines CM-5"
        assert trace.field("Installation") == "Los Alamos National Lab (LANL)"
        assert "Dror Feitelson" in trace.field("Conversion")
        start, end = int(trace.field("SliceStartTime")), int(trace.field("SliceEndTime"))
        assert end - start == SPAN_DAYS * 86400
        numbers = [j.number for j in trace.jobs]
        assert len(numbers) == len(set(numbers)) > 20_000
        for job in trace.jobs:
            assert job.run > 0 and job.procs > 0
            assert start <= job.end(trace.origin) < end

    def test_the_slice_ships_with_its_readme(self):
        readme = SLICE.with_name("README.md").read_text()
        assert "https://www.cs.huji.ac.il/labs/parallel/workload/" in readme
        assert "D. G. Feitelson, D. Tsafrir and D. Krakov" in readme
        assert "Experience with using the Parallel Workloads Archive" in readme
        assert "Curt Canada" in readme
        assert "synthetic" in readme


class TestLoadDemoAgain:
    """Runs that need an empty database of their own."""

    def test_running_it_again_changes_nothing(self, db):
        with FAST_HASHING:
            load()
        before = snapshot()
        assert "already loaded" in load()
        assert snapshot() == before

    def test_the_same_today_gives_the_same_data(self, db):
        def run_and_roll_back() -> dict:
            with FAST_HASHING, transaction.atomic():
                load()
                data = snapshot()
                transaction.set_rollback(True)
            return data

        first = run_and_roll_back()
        assert first == run_and_roll_back()
        assert first["usage"] and first["allocations"]

    def test_it_refuses_a_date_that_is_not_one(self, db):
        with pytest.raises(CommandError, match="not a date"):
            call_command("load_demo", "--today", "15/03/2026")
