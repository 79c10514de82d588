"""Every named constraint rejects a bad row at the database level.

Each case writes one bad row bypassing the services (update(), create()), so it is the
database, not full_clean(), that must refuse it. PostgreSQL names the constraint in its
error and SQLite names CHECK constraints; both are asserted where the database says it.
"""

import datetime as dt
import uuid
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.db import IntegrityError, connection, transaction
from django.db.models import CheckConstraint, F
from django.utils import timezone

from accounts.models import ApiToken, AuditEvent, Organization, User
from allocations import services
from allocations.models import (
    AlertSent,
    Allocation,
    AllocationChange,
    ChangeRequest,
    ClusterCapacityChange,
    Hold,
    Membership,
    MembershipChange,
    Project,
    Rate,
    RateCorrection,
    Resource,
    SyncReport,
    TaskFailure,
    TresMapping,
    Usage,
    UsageAdjustment,
    UsageDaily,
    UsageImport,
    UsageImportReject,
)
from tests.conftest import END, RATE_START, START, usage

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="the exclusion constraint allocations_rate_no_overlap exists only on PostgreSQL "
    "(migration 0002); services.rate_add holds the rule on other databases",
)

# Constraints created in migrations rather than declared in Meta.constraints.
MIGRATION_CONSTRAINTS = {"allocations_rate_no_overlap"}

ONE_DAY = dt.timedelta(days=1)


@pytest.fixture
def w(allocation, alice, bob, dana, org, gpu, cpu):
    """One valid row of every model, to be spoiled by one case."""
    services.usage_record_batch(
        cluster=allocation.cluster, records=[usage(allocation, bob, gpu, "1", 10)]
    )
    charge = Usage.objects.get(job_id="1")
    pending = services.change_request_submit(
        actor=alice, allocation=allocation, su_delta="100", justification="More runs"
    )
    return SimpleNamespace(
        org=org,
        alice=alice,
        bob=bob,
        project=allocation.project,
        cluster=allocation.cluster,
        gpu=gpu,
        rate=gpu.rates.get(),
        allocation=allocation,
        approved=ChangeRequest.objects.get(allocation=allocation, kind="NEW"),
        pending=pending,
        event=pending.events.get(),
        change=AllocationChange.objects.filter(allocation=allocation).last(),
        membership=Membership.objects.get(allocation=allocation, user=bob),
        membership_change=MembershipChange.objects.filter(membership__user=bob).last(),
        usage=charge,
        refund=UsageAdjustment.objects.create(
            usage=charge,
            allocation=allocation,
            user=bob,
            kind="REFUND",
            su_delta=Decimal("-1"),
            reason="Node failure",
        ),
        correction=RateCorrection.objects.create(
            rate=gpu.rates.get(),
            old_su_per_unit_hour=Decimal("2"),
            new_su_per_unit_hour=Decimal("3"),
            reason="Typo",
        ),
        hold=Hold.objects.create(
            cluster=allocation.cluster,
            allocation=allocation,
            user=bob,
            resource=gpu,
            job_id="2",
            su_amount=Decimal("5"),
            expires_at=timezone.now() + dt.timedelta(hours=1),
        ),
    )


def _update(obj, **values) -> None:
    type(obj).objects.filter(pk=obj.pk).update(**values)


def _twice(model, **values) -> None:
    model.objects.create(**values)
    model.objects.create(**values)


def _new_request(w, **values) -> ChangeRequest:
    fields = {
        "allocation": w.allocation,
        "kind": "NEW",
        "su_delta": Decimal("10"),
        "requested_status": "ACTIVE",
        "justification": "Again",
        "requester": w.alice,
    }
    return ChangeRequest.objects.create(**(fields | values))


def _usage_row(w, **values) -> Usage:
    fields = {
        f.name: getattr(w.usage, f.name)
        for f in Usage._meta.concrete_fields
        if f.name not in ("id", "recorded_at")
    }
    return Usage.objects.create(**(fields | values))


def _import(w, **values) -> UsageImport:
    fields = {
        "cluster": w.cluster,
        "created_by": w.alice,
        "format": "sacct",
        "file": "imports/x",
        "original_name": "x.txt",
        "size": 1,
        "batch_size": 1,
    }
    return UsageImport.objects.create(**(fields | values))


def _token(w) -> ApiToken:
    return ApiToken.objects.create(cluster=w.cluster, name="t", prefix="sup_x", hashed="0" * 64)


def _hold(w, **values) -> Hold:
    fields = {
        "cluster": w.cluster,
        "allocation": w.allocation,
        "user": w.bob,
        "resource": w.gpu,
        "job_id": "2",
        "su_amount": Decimal("5"),
        "expires_at": timezone.now(),
    }
    return Hold.objects.create(**(fields | values))


def _daily(w, **values) -> UsageDaily:
    fields = {
        "allocation": w.allocation,
        "user": w.bob,
        "resource": w.gpu,
        "day": START,
        "su": Decimal("20"),
        "raw": Decimal("36000"),
        "jobs": 1,
    }
    return UsageDaily.objects.create(**(fields | values))


def _alert(w, **values) -> AlertSent:
    fields = {
        "allocation": w.allocation,
        "kind": "USAGE",
        "threshold": 75,
        "basis": Decimal("1000"),
        "created": timezone.now(),
    }
    return AlertSent.objects.create(**(fields | values))


def _ending(w, **values) -> AlertSent:
    return _alert(w, **({"kind": "ENDING", "threshold": 30, "basis": None, "end": END} | values))


# (constraint name, case id, the bad write)
CASES = [
    ("allocations_project_valid_status", "", lambda w: _update(w.project, status="FROZEN")),
    (
        "allocations_project_unique_originated_id",
        "",
        lambda w: _twice(Project, title="T", pi=w.alice, origination="ACCESS", originated_id="A1"),
    ),
    (
        "allocations_projectchange_valid_kind",
        "",
        lambda w: _update(w.project.changes.first(), kind="RENAMED"),
    ),
    (
        "allocations_cluster_capacity_positive",
        "",
        lambda w: _update(w.cluster, su_capacity_per_month=0),
    ),
    (
        "allocations_cluster_billing_rate_positive",
        "",
        lambda w: _update(w.cluster, su_per_billing_unit_hour=0),
    ),
    (
        "allocations_syncreport_valid_mode",
        "",
        lambda w: SyncReport.objects.create(cluster=w.cluster, mode="MAYBE", succeeded=True),
    ),
    (
        "allocations_syncreport_error_iff_failed",
        "failed without a reason",
        lambda w: SyncReport.objects.create(cluster=w.cluster, mode="APPLY", succeeded=False),
    ),
    (
        "allocations_syncreport_error_iff_failed",
        "succeeded with an error",
        lambda w: SyncReport.objects.create(
            cluster=w.cluster, mode="APPLY", succeeded=True, error="sacctmgr failed"
        ),
    ),
    (
        "allocations_clustercapacitychange_capacity_positive",
        "",
        lambda w: ClusterCapacityChange.objects.create(
            cluster=w.cluster, new_su_capacity_per_month=Decimal(0), reason="Typo"
        ),
    ),
    (
        "allocations_resource_unique_name",
        "case-insensitive",
        lambda w: Resource.objects.create(
            cluster=w.cluster, name="gpu h200", kind="GPU", unit="GPU"
        ),
    ),
    ("allocations_resource_valid_kind", "", lambda w: _update(w.gpu, kind="TPU")),
    (
        "allocations_rate_not_negative",
        "",
        lambda w: _update(w.rate, su_per_unit_hour=Decimal("-0.5")),
    ),
    ("allocations_rate_end_after_start", "empty", lambda w: _update(w.rate, end=F("start"))),
    (
        "allocations_rate_end_after_start",
        "reversed",
        lambda w: _update(w.rate, end=RATE_START - ONE_DAY),
    ),
    pytest.param(
        "allocations_rate_no_overlap",
        "inside an open window",
        lambda w: Rate.objects.create(
            resource=w.gpu, su_per_unit_hour=3, start=RATE_START + ONE_DAY
        ),
        marks=postgres_only,
    ),
    pytest.param(
        "allocations_rate_no_overlap",
        "same start",
        lambda w: Rate.objects.create(
            resource=w.gpu, su_per_unit_hour=3, start=RATE_START, end=RATE_START + ONE_DAY
        ),
        marks=postgres_only,
    ),
    pytest.param(
        "allocations_rate_no_overlap",
        "open window before an open window",
        lambda w: Rate.objects.create(
            resource=w.gpu, su_per_unit_hour=3, start=RATE_START - ONE_DAY
        ),
        marks=postgres_only,
    ),
    ("allocations_allocation_valid_status", "", lambda w: _update(w.allocation, status="FROZEN")),
    (
        "allocations_allocation_unique_account",
        "",
        lambda w: Allocation.objects.create(
            project=w.project, cluster=w.cluster, name=w.allocation.name, start=START, end=END
        ),
    ),
    (
        "allocations_allocation_budget_not_negative",
        "",
        lambda w: _update(w.allocation, su_budget=Decimal("-0.0001")),
    ),
    (
        "allocations_allocation_used_not_negative",
        "",
        lambda w: _update(w.allocation, su_used=Decimal("-1")),
    ),
    (
        "allocations_allocation_held_not_negative",
        "",
        lambda w: _update(w.allocation, su_held=Decimal("-1")),
    ),
    (
        "allocations_allocation_end_after_start",
        "",
        lambda w: _update(w.allocation, end=START - ONE_DAY),
    ),
    (
        "allocations_changerequest_valid_state",
        "",
        lambda w: _update(w.approved, state="ON_HOLD", su_approved=None),
    ),
    ("allocations_changerequest_valid_kind", "", lambda w: _update(w.pending, kind="RENEW")),
    (
        "allocations_changerequest_valid_requested_status",
        "",
        lambda w: _update(w.pending, requested_status="FROZEN"),
    ),
    ("allocations_changerequest_valid_priority", "0", lambda w: _update(w.pending, priority=0)),
    ("allocations_changerequest_valid_priority", "5", lambda w: _update(w.pending, priority=5)),
    (
        "allocations_changerequest_delta_not_zero",
        "",
        lambda w: _update(w.pending, su_delta=Decimal(0)),
    ),
    (
        "allocations_changerequest_asks_something",
        "",
        lambda w: _update(w.pending, su_delta=None, requested_status="", requested_end=None),
    ),
    (
        "allocations_changerequest_new_has_budget",
        "negative",
        lambda w: _update(w.approved, su_delta=Decimal("-5")),
    ),
    pytest.param(
        "allocations_changerequest_new_has_budget",
        "empty",
        lambda w: _update(w.approved, su_delta=None),
    ),
    (
        "allocations_changerequest_approved_amount_only_when_approved",
        "",
        lambda w: _update(w.pending, su_approved=Decimal("100")),
    ),
    (
        "allocations_changerequest_decided_iff_not_pending",
        "pending with a decision time",
        lambda w: _update(w.pending, decided_at=timezone.now()),
    ),
    (
        "allocations_changerequest_decided_iff_not_pending",
        "approved without a decision time",
        lambda w: _update(w.approved, decided_at=None),
    ),
    (
        "allocations_changerequest_one_pending_new",
        "",
        lambda w: (_new_request(w), _new_request(w)),
    ),
    ("allocations_changerequestevent_valid_kind", "", lambda w: _update(w.event, kind="LIKED")),
    (
        "allocations_allocationchange_budget_not_negative",
        "",
        lambda w: _update(w.change, su_budget=Decimal("-1")),
    ),
    (
        "allocations_allocationchange_valid_status",
        "",
        lambda w: _update(w.change, status="FROZEN"),
    ),
    ("allocations_allocationchange_valid_kind", "", lambda w: _update(w.change, kind="GIFT")),
    (
        "allocations_allocationchange_one_per_request",
        "",
        lambda w: AllocationChange.objects.create(
            allocation=w.allocation,
            kind="REQUEST",
            su_delta=Decimal(0),
            su_budget=w.allocation.su_budget,
            status="INACTIVE",
            change_request=w.approved,
        ),
    ),
    (
        "allocations_membership_valid_status",
        "",
        lambda w: _update(w.membership, status="BANNED"),
    ),
    (
        "allocations_membership_one_per_user",
        "",
        lambda w: Membership.objects.create(allocation=w.allocation, user=w.bob, start=START),
    ),
    (
        "allocations_membership_cap_not_negative",
        "",
        lambda w: _update(w.membership, su_cap=Decimal("-1")),
    ),
    (
        "allocations_membership_used_not_negative",
        "",
        lambda w: _update(w.membership, su_used=Decimal("-1")),
    ),
    (
        "allocations_membership_held_not_negative",
        "",
        lambda w: _update(w.membership, su_held=Decimal("-1")),
    ),
    (
        "allocations_membership_end_after_start",
        "",
        lambda w: _update(w.membership, end=START - ONE_DAY),
    ),
    (
        "allocations_membershipchange_valid_kind",
        "",
        lambda w: _update(w.membership_change, kind="PROMOTED"),
    ),
    (
        "allocations_membershipchange_cap_not_negative",
        "",
        lambda w: _update(w.membership_change, su_cap=Decimal("-1")),
    ),
    (
        "allocations_usage_one_per_job_resource_user",
        "",
        lambda w: _usage_row(w, su_amount=Decimal("1")),
    ),
    (
        "allocations_usage_charge_not_negative",
        "",
        lambda w: _update(w.usage, su_amount=Decimal("-1")),
    ),
    (
        "allocations_usage_raw_not_negative",
        "",
        lambda w: _update(w.usage, raw_unit_seconds=Decimal("-1")),
    ),
    (
        "allocations_usage_end_after_start",
        "",
        lambda w: _update(
            w.usage, started_at=w.usage.charged_at, ended_at=w.usage.charged_at - ONE_DAY
        ),
    ),
    (
        "allocations_usageadjustment_valid_kind",
        "",
        lambda w: _update(w.refund, kind="GOODWILL"),
    ),
    (
        "allocations_usageadjustment_one_refund",
        "",
        lambda w: UsageAdjustment.objects.create(
            usage=w.usage,
            allocation=w.allocation,
            user=w.bob,
            kind="REFUND",
            su_delta=Decimal("-1"),
            reason="Again",
        ),
    ),
    (
        "allocations_usageadjustment_refund_not_positive",
        "",
        lambda w: _update(w.refund, su_delta=Decimal("1")),
    ),
    (
        "allocations_ratecorrection_not_negative",
        "",
        lambda w: _update(w.correction, new_su_per_unit_hour=Decimal("-1")),
    ),
    (
        "allocations_hold_valid_state",
        "",
        lambda w: _update(w.hold, state="PAUSED", closed_at=timezone.now()),
    ),
    ("allocations_hold_amount_positive", "", lambda w: _update(w.hold, su_amount=Decimal(0))),
    ("allocations_hold_one_open_per_job", "", lambda w: _hold(w)),
    (
        "allocations_hold_closed_iff_not_open",
        "closed without a time",
        lambda w: _update(w.hold, state="SETTLED"),
    ),
    (
        "allocations_hold_closed_iff_not_open",
        "open with a close time",
        lambda w: _update(w.hold, closed_at=timezone.now()),
    ),
    (
        "allocations_tresmapping_unique",
        "blank partition",
        # Blank, not NULL: "any partition" must clash with itself like any other value.
        lambda w: _twice(TresMapping, cluster=w.cluster, partition="", tres="cpu", resource=w.gpu),
    ),
    (
        "allocations_tresmapping_scale_positive",
        "",
        lambda w: TresMapping.objects.create(
            cluster=w.cluster, tres="mem", resource=w.gpu, scale=Decimal(0)
        ),
    ),
    ("allocations_usageimport_valid_state", "", lambda w: _import(w, state="paused")),
    ("allocations_usageimport_valid_format", "", lambda w: _import(w, format="csv")),
    (
        "allocations_usageimport_tz_only_for_sacct",
        "",
        lambda w: _import(w, format="swf", tz="UTC"),
    ),
    (
        "allocations_usageimport_one_starter",
        "nobody",
        lambda w: _import(w, created_by=None),
    ),
    (
        "allocations_usageimport_one_starter",
        "a user and a token",
        lambda w: _import(w, token=_token(w)),
    ),
    ("allocations_usageimport_batch_positive", "", lambda w: _import(w, batch_size=0)),
    (
        "allocations_usageimport_resumed_within_checkpoint",
        "",
        lambda w: _import(w, checkpoint=1, resumed_from=5),
    ),
    (
        "allocations_usageimport_runner_only_when_running",
        "",
        lambda w: _import(w, runner=uuid.uuid4()),
    ),
    (
        "allocations_usageimport_finished_iff_ended",
        "done without a time",
        lambda w: _import(w, state="done"),
    ),
    (
        "allocations_usageimport_finished_iff_ended",
        "queued with a time",
        lambda w: _import(w, finished_at=timezone.now()),
    ),
    (
        "allocations_usageimportreject_has_reason",
        "",
        lambda w: UsageImportReject.objects.create(usage_import=_import(w), line=1, reason=""),
    ),
    ("allocations_usagedaily_one_per_key", "", lambda w: (_daily(w), _daily(w, su=1))),
    ("allocations_usagedaily_su_not_negative", "", lambda w: _daily(w, su=Decimal("-1"))),
    ("allocations_usagedaily_raw_not_negative", "", lambda w: _daily(w, raw=Decimal("-1"))),
    ("allocations_usagedaily_has_jobs", "", lambda w: _daily(w, jobs=0)),
    ("allocations_alertsent_valid_kind", "", lambda w: _alert(w, kind="NAG")),
    (
        "allocations_alertsent_fields_match_kind",
        "usage without a basis",
        lambda w: _alert(w, basis=None),
    ),
    (
        "allocations_alertsent_fields_match_kind",
        "ending without an end",
        lambda w: _ending(w, end=None),
    ),
    ("allocations_alertsent_threshold_in_range", "0", lambda w: _alert(w, threshold=0)),
    ("allocations_alertsent_threshold_in_range", "101%", lambda w: _alert(w, threshold=101)),
    (
        "allocations_alertsent_once_per_allocation_crossing",
        "",
        lambda w: (_alert(w), _alert(w)),
    ),
    (
        "allocations_alertsent_once_per_member_crossing",
        "",
        lambda w: (_alert(w, membership=w.membership), _alert(w, membership=w.membership)),
    ),
    ("allocations_alertsent_once_per_allocation_end", "", lambda w: (_ending(w), _ending(w))),
    (
        "allocations_alertsent_once_per_member_end",
        "",
        lambda w: (_ending(w, membership=w.membership), _ending(w, membership=w.membership)),
    ),
    ("allocations_taskfailure_names_task", "", lambda w: TaskFailure.objects.create(task="")),
    (
        "accounts_organization_unique_name",
        "case-insensitive",
        lambda w: Organization.objects.create(name=w.org.name.upper()),
    ),
    (
        "accounts_organization_unique_originated_id",
        "",
        lambda w: (
            Organization.objects.create(name="One", originated_id="ror:123"),
            Organization.objects.create(name="Two", originated_id="ror:123"),
        ),
    ),
    (
        "accounts_user_unique_email",
        "case-insensitive",
        lambda w: User.objects.create(username="alice2", email=w.alice.email.upper()),
    ),
    (
        "accounts_user_unique_oidc_sub",
        "",
        lambda w: (
            User.objects.create(username="o1", email="o1@example.edu", oidc_sub="sub-1"),
            User.objects.create(username="o2", email="o2@example.edu", oidc_sub="sub-1"),
        ),
    ),
    (
        "accounts_auditevent_valid_action",
        "",
        lambda w: AuditEvent.objects.create(action="SHRUGGED", actor=w.alice),
    ),
    (
        "accounts_auditevent_target_has_type",
        "a public id without its type",
        lambda w: AuditEvent.objects.create(action="SIGN_IN", target_code=w.alice.code),
    ),
]


def _case(case) -> tuple:
    if hasattr(case, "values"):  # a pytest.param
        name, label, write = case.values
        return pytest.param(name, write, marks=case.marks, id=f"{name}-{label}".strip("-"))
    name, label, write = case
    return pytest.param(name, write, id=f"{name}-{label}".strip("-"))


def _name(case) -> str:
    return (case.values if hasattr(case, "values") else case)[0]


def _declared() -> dict[str, object]:
    return {
        constraint.name: constraint
        for app in ("accounts", "allocations")
        for model in apps.get_app_config(app).get_models()
        for constraint in model._meta.constraints
    }


class TestConstraints:
    @pytest.mark.parametrize(("name", "write"), [_case(case) for case in CASES])
    def test_it_rejects_the_bad_row_in_the_database(self, w, name, write):
        with pytest.raises(IntegrityError) as excinfo, transaction.atomic():
            write(w)
        # The row must break this constraint and no other: PostgreSQL names the constraint
        # in every error, SQLite only in CHECK failures.
        if connection.vendor == "postgresql":
            assert f'constraint "{name}"' in str(excinfo.value)
        elif isinstance(_declared().get(name), CheckConstraint):
            assert str(excinfo.value) == f"CHECK constraint failed: {name}"

    def test_every_named_constraint_has_a_case(self):
        assert set(_declared()) | MIGRATION_CONSTRAINTS == {_name(case) for case in CASES}

    @postgres_only
    def test_the_exclusion_constraint_is_installed(self, db):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT contype FROM pg_constraint WHERE conname = %s",
                ["allocations_rate_no_overlap"],
            )
            assert cursor.fetchall() == [("x",)]


class TestConstraintConditions:
    """Partial constraints must not refuse the rows their condition leaves out."""

    @postgres_only
    def test_adjacent_rate_windows_are_allowed(self, w):
        Rate.objects.filter(pk=w.rate.pk).update(end=RATE_START + ONE_DAY)
        Rate.objects.create(resource=w.gpu, su_per_unit_hour=3, start=RATE_START + ONE_DAY)
        Rate.objects.create(
            resource=w.gpu, su_per_unit_hour=1, start=RATE_START - ONE_DAY, end=RATE_START
        )
        assert w.gpu.rates.count() == 3

    def test_blank_originated_ids_may_repeat(self, w):
        Project.objects.create(title="A", pi=w.alice, originated_id="")
        Project.objects.create(title="B", pi=w.alice, originated_id="")
        Organization.objects.create(name="One")
        Organization.objects.create(name="Two")
        assert Organization.objects.filter(originated_id="").count() == 3

    def test_the_same_originated_id_may_repeat_across_originations(self, w):
        Project.objects.create(title="A", pi=w.alice, origination="ACCESS", originated_id="X")
        Project.objects.create(title="B", pi=w.alice, origination="NAIRR", originated_id="X")
        assert Project.objects.filter(originated_id="X").count() == 2

    def test_a_new_request_may_follow_a_decided_one(self, w):
        assert w.approved.state == "APPROVED"
        assert _new_request(w).state == "PENDING"

    def test_a_job_may_be_held_again_once_its_hold_is_closed(self, w):
        _update(w.hold, state="SETTLED", closed_at=timezone.now())
        assert _hold(w).state == "OPEN"

    def test_a_job_may_be_rerated_more_than_once(self, w):
        for _ in range(2):
            UsageAdjustment.objects.create(
                usage=w.usage,
                allocation=w.allocation,
                user=w.bob,
                kind="RERATE",
                su_delta=Decimal("1"),
                reason="Rate corrected",
            )
        assert w.usage.adjustments.count() == 3

    def test_changes_without_a_request_may_repeat(self, w):
        for _ in range(2):
            AllocationChange.objects.create(
                allocation=w.allocation, kind="IMPORT", su_budget=w.allocation.su_budget
            )
        assert w.allocation.changes.filter(change_request=None).count() == 3

    def test_users_without_an_oidc_subject_may_repeat(self, w):
        assert User.objects.filter(oidc_sub="").count() == User.objects.count() >= 2

    def test_users_without_an_email_may_repeat(self, w):
        User.objects.create(username="x1", email="")
        User.objects.create(username="x2", email="")
        assert User.objects.filter(email="").count() == 2

    def test_a_threshold_may_warn_again_at_another_budget(self, w):
        _alert(w)
        _alert(w, basis=Decimal("2000"))
        # ... and once for the allocation and once for a member at the same level.
        _alert(w, membership=w.membership)

    def test_an_extended_end_may_be_warned_about_again(self, w):
        _ending(w)
        _ending(w, end=END + ONE_DAY)
        _ending(w, threshold=7)
        _ending(w, membership=w.membership)

    def test_an_ending_alert_may_count_more_than_100_days(self, w):
        _ending(w, threshold=120)


class TestUsageIndexes:
    """Every index on the usage table costs each of the 10,000 inserts of a batch: the
    table has exactly the indexes its reads need (migration 0010 dropped the three that
    only repeated the leading column of another)."""

    def _indexes(self, table: str) -> dict[str, list[str]]:
        with connection.cursor() as cursor:
            found = connection.introspection.get_constraints(cursor, table)
        return {
            name: info["columns"]
            for name, info in found.items()
            if (info["index"] or info["unique"]) and not info["primary_key"]
        }

    @pytest.mark.django_db
    def test_the_usage_table_has_no_index_that_another_covers(self):
        columns = sorted(self._indexes("allocations_usage").values())

        assert columns == sorted(
            [
                ["allocation_id", "charged_at"],
                ["allocation_id", "user_id", "charged_at"],
                ["resource_id", "charged_at"],
                ["cluster_id", "job_id", "resource_id", "user_id"],
                ["rate_id"],
                ["user_id"],
            ]
        )

    @pytest.mark.django_db
    def test_the_rollups_have_no_plain_allocation_index(self):
        led_by_allocation = {
            name
            for name, cols in self._indexes("allocations_usagedaily").items()
            if cols[0] == "allocation_id"
        }

        # The unique key (the upsert's target) and the indexes the charts and the
        # allocation page read from alone; the foreign key's own index is gone.
        assert led_by_allocation == {
            "allocations_usagedaily_one_per_key",
            "alloc_usagedaily_charts",
            "alloc_usagedaily_resource",
        }
