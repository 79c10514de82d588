"""The Django admin of the allocation domain: every changelist has a query budget that
does not grow with its rows, nothing is deleted, append-only records are view-only, and
every write goes through the services, refusals included."""

import datetime as dt
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import User
from allocations import services
from allocations.models import (
    Allocation,
    AllocationChange,
    ChangeRequest,
    ChangeRequestEvent,
    Cluster,
    Hold,
    Membership,
    MembershipChange,
    Project,
    ProjectChange,
    Rate,
    RateCorrection,
    Resource,
    SyncReport,
    Usage,
    UsageAdjustment,
)
from tests.allocations.dbstate import unchanged
from tests.conftest import END, START, make_user, usage


def url(model, view: str, *args) -> str:
    return reverse(f"admin:allocations_{model._meta.model_name}_{view}", args=args)


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


@pytest.fixture
def superuser(org):
    return make_user("super", org, is_staff=True, is_superuser=True)


@pytest.fixture
def signed_in(client, superuser):
    client.force_login(superuser)
    return client


@pytest.fixture
def world(allocation, alice, bob, dana, gpu, pending_request):
    """Everything the row builders below hang their rows on."""
    services.usage_record(cluster=allocation.cluster, record=usage(allocation, bob, gpu, "1", 1))
    return SimpleNamespace(
        alice=alice,
        bob=bob,
        dana=dana,
        allocation=allocation,
        cluster=allocation.cluster,
        gpu=gpu,
        rate=gpu.rates.get(),
        request=pending_request,
        membership=Membership.objects.get(allocation=allocation, user=bob),
        usage=Usage.objects.get(),
        spare=Resource.objects.create(
            cluster=allocation.cluster, name="spare", kind="OTHER", unit="unit"
        ),
    )


def _when(i: int) -> dt.datetime:
    return dt.datetime(2030, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=i)


# One unsaved row of each model, numbered i; rows share their related objects, which is
# enough to show a query per row (Django does not cache related rows across rows).
ROWS = {
    Project: lambda w, i: Project(title=f"Project {i}", pi=w.alice),
    ProjectChange: lambda w, i: ProjectChange(
        project=w.allocation.project, kind="STATUS", status="ACTIVE", subject=w.bob, actor=w.dana
    ),
    Cluster: lambda w, i: Cluster(name=f"cluster-{i}"),
    Resource: lambda w, i: Resource(cluster=w.cluster, name=f"R{i}", kind="CPU", unit="core"),
    Rate: lambda w, i: Rate(
        resource=w.spare, su_per_unit_hour=1, start=_when(i), end=_when(i + 1), created_by=w.dana
    ),
    RateCorrection: lambda w, i: RateCorrection(
        rate=w.rate, old_su_per_unit_hour=2, new_su_per_unit_hour=2, actor=w.dana, reason="r"
    ),
    Allocation: lambda w, i: Allocation(
        project=w.allocation.project, cluster=w.cluster, name=f"alloc-{i}", start=START, end=END
    ),
    AllocationChange: lambda w, i: AllocationChange(
        allocation=w.allocation, kind="ADMIN", su_budget=1000, actor=w.dana, reason="r"
    ),
    ChangeRequest: lambda w, i: ChangeRequest(
        allocation=w.allocation, su_delta=10, justification="j", requester=w.alice
    ),
    ChangeRequestEvent: lambda w, i: ChangeRequestEvent(
        request=w.request, kind="COMMENTED", actor=w.dana, text="t"
    ),
    Membership: lambda w, i: Membership(
        allocation=w.allocation,
        user=User.objects.create(username=f"member{i}", email=f"member{i}@example.edu"),
        start=START,
    ),
    MembershipChange: lambda w, i: MembershipChange(
        membership=w.membership, kind="CAP", su_cap=1, actor=w.alice
    ),
    Usage: lambda w, i: Usage(
        cluster=w.cluster,
        allocation=w.allocation,
        user=w.bob,
        job_id=f"job-{i}",
        resource=w.gpu,
        raw_unit_seconds=3600,
        rate=w.rate,
        su_amount=2,
        charged_at=_when(i),
    ),
    UsageAdjustment: lambda w, i: UsageAdjustment(
        usage=w.usage,
        allocation=w.allocation,
        user=w.bob,
        kind="CORRECTION",
        su_delta=0,
        actor=w.dana,
        reason="r",
    ),
    SyncReport: lambda w, i: SyncReport(
        cluster=w.cluster,
        mode="APPLY",
        succeeded=True,
        drift=[{"kind": "missing_user", "account": "folding-gpu", "user": f"u{i}"}],
        drift_count=1,
        applied=[f"sacctmgr --immediate add user u{i} Account=folding-gpu cluster=gpu1"],
    ),
    Hold: lambda w, i: Hold(
        cluster=w.cluster,
        allocation=w.allocation,
        user=w.bob,
        resource=w.gpu,
        job_id=f"held-{i}",
        su_amount=1,
        expires_at=_when(i),
    ),
}
APPEND_ONLY = [
    ProjectChange,
    AllocationChange,
    ChangeRequestEvent,
    MembershipChange,
    Usage,
    UsageAdjustment,
    RateCorrection,
    Hold,
    SyncReport,
]


def add_rows(world, model, start: int, count: int) -> None:
    model.objects.bulk_create([ROWS[model](world, i) for i in range(start, start + count)])


def changelist_queries(client, model) -> tuple[list[str], int]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url(model, "changelist"))
    assert response.status_code == 200
    return [q["sql"] for q in queries.captured_queries], len(response.context["cl"].result_list)


class TestChangelists:
    @pytest.mark.parametrize("model", ROWS, ids=lambda model: model.__name__)
    def test_it_runs_as_many_queries_for_50_rows_as_for_2(self, signed_in, world, model):
        add_rows(world, model, 0, 2)
        signed_in.get(url(model, "changelist"))  # warm per-process caches (content types)
        few, _ = changelist_queries(signed_in, model)
        add_rows(world, model, 2, 48)
        many, shown = changelist_queries(signed_in, model)
        assert shown >= 50
        assert len(many) == len(few), "\n".join(
            [f"{len(few)} queries for 2 rows:", *few, f"{len(many)} for 50:", *many]
        )

    def test_it_shows_an_allocations_balance(self, signed_in, world):
        response = signed_in.get(url(Allocation, "changelist"))
        row = response.context["cl"].result_list[0]
        assert (row.su_budget, row.su_used) == (Decimal("1000"), Decimal("2"))
        assert "998.0000" in response.content.decode()

    def test_it_shows_each_clusters_last_sync_and_its_drift(self, signed_in, world):
        add_rows(world, SyncReport, 0, 2)
        SyncReport.objects.create(
            cluster=world.cluster,
            mode="DRY_RUN",
            succeeded=False,
            error="sacctmgr: error: Problem talking to the database",
            drift=[{"kind": "limits", "account": "folding-gpu", "user": u} for u in "abc"],
            drift_count=3,
        )
        Cluster.objects.create(name="never-synced")

        response = signed_in.get(url(Cluster, "changelist"))

        rows = {row.name: row for row in response.context["cl"].result_list}
        assert (rows["gpu1"].last_sync_drift_count, rows["gpu1"].last_sync_succeeded) == (3, False)
        assert rows["never-synced"].last_sync_at is None
        content = response.content.decode()
        assert "dry run, FAILED" in content
        assert "never" in content


class TestPages:
    @pytest.mark.parametrize("model", ROWS, ids=lambda model: model.__name__)
    def test_it_renders_every_change_page(self, signed_in, world, model):
        add_rows(world, model, 0, 1)
        obj = model.objects.order_by("-pk").first()
        assert signed_in.get(url(model, "change", obj.pk)).status_code == 200

    @pytest.mark.parametrize(
        "model",
        [Project, Cluster, Resource, Rate, Allocation, Membership],
        ids=lambda model: model.__name__,
    )
    def test_it_renders_every_add_page(self, signed_in, model):
        assert signed_in.get(url(model, "add")).status_code == 200


class TestNothingIsDeleted:
    @pytest.mark.parametrize("model", ROWS, ids=lambda model: model.__name__)
    def test_it_has_no_delete_action_and_refuses_the_delete_view(self, signed_in, world, model):
        add_rows(world, model, 0, 1)
        obj = model.objects.order_by("-pk").first()
        response = signed_in.get(url(model, "changelist"))
        action_form = response.context["action_form"]
        actions = [name for name, _ in action_form.fields["action"].choices] if action_form else []
        assert "delete_selected" not in actions
        with unchanged():
            assert signed_in.get(url(model, "delete", obj.pk)).status_code == 403
            assert signed_in.post(url(model, "delete", obj.pk), {"post": "yes"}).status_code == 403


class TestAppendOnlyRecords:
    @pytest.mark.parametrize("model", APPEND_ONLY, ids=lambda model: model.__name__)
    def test_it_shows_but_never_adds_or_changes_them(self, signed_in, world, model):
        add_rows(world, model, 0, 1)
        obj = model.objects.order_by("-pk").first()
        assert signed_in.get(url(model, "change", obj.pk)).status_code == 200
        with unchanged():
            assert signed_in.post(url(model, "change", obj.pk), {}).status_code == 403
            assert signed_in.get(url(model, "add")).status_code == 403
            assert signed_in.post(url(model, "add"), {}).status_code == 403

    def test_it_never_edits_a_change_request(self, signed_in, pending_request):
        with unchanged():
            response = signed_in.post(
                url(ChangeRequest, "change", pending_request.pk),
                {"justification": "edited", "su_delta": "5"},
            )
        assert response.status_code == 403


def decision_record(change_request: ChangeRequest) -> dict:
    """What deciding a request wrote, without ids and times, to compare two decisions."""
    change_request.refresh_from_db()
    allocation = Allocation.objects.get(pk=change_request.allocation_id)
    return {
        "request": (
            change_request.state,
            change_request.decided_by_id,
            change_request.su_approved,
            change_request.decision_reason,
        ),
        "diffs": list(
            AllocationChange.objects.filter(allocation=allocation)
            .exclude(kind="CREATED")
            .values("kind", "su_delta", "su_budget", "status", "start", "end", "actor", "reason")
        ),
        "events": list(
            change_request.events.exclude(kind="CREATED").values("kind", "actor", "text")
        ),
        "allocation": (allocation.status, allocation.su_budget, allocation.end),
    }


@pytest.fixture
def twin(alice, project, cluster, gpu, cpu, pending_request):
    """A second request, identical to pending_request, to decide through the service."""
    return services.allocation_request_create(
        actor=alice,
        project=project,
        cluster=cluster,
        name="folding-twin",
        resources=[gpu, cpu],
        su_amount="1000",
        start=START,
        end=END,
        justification="Training runs",
    )


def act(client, action: str, objects, **data):
    model = type(objects[0])
    return client.post(
        url(model, "changelist"),
        {"action": action, "_selected_action": [obj.pk for obj in objects], **data},
    )


class TestChangeRequestActions:
    def test_it_approves_as_the_service_does(self, signed_in, superuser, pending_request, twin):
        response = act(signed_in, "approve", [pending_request])

        assert response.status_code == 302
        assert messages_of(response) == ["Approved 1 change request."]
        services.change_request_approve(actor=superuser, request=twin)
        assert decision_record(pending_request) == decision_record(twin)
        diff = AllocationChange.objects.get(change_request=pending_request)
        assert (diff.kind, diff.su_delta, diff.su_budget) == ("REQUEST", 1000, 1000)
        assert pending_request.state == "APPROVED"
        assert pending_request.events.filter(kind="APPROVED", actor=superuser).count() == 1

    def test_it_reports_a_request_that_is_no_longer_pending(self, signed_in, allocation):
        decided = ChangeRequest.objects.get(allocation=allocation)
        with unchanged():
            response = act(signed_in, "approve", [decided])
        assert messages_of(response) == [
            f"{decided}: This request is already approved; only a pending request can be approved."
        ]

    def test_it_approves_what_it_can_and_reports_the_rest(self, signed_in, allocation, alice, twin):
        decided = ChangeRequest.objects.get(allocation=allocation)
        response = act(signed_in, "approve", [decided, twin])
        assert messages_of(response) == [
            f"{decided}: This request is already approved; only a pending request can be approved.",
            "Approved 1 change request.",
        ]
        twin.refresh_from_db()
        assert twin.state == "APPROVED"

    def test_it_asks_why_before_rejecting(self, signed_in, pending_request):
        with unchanged():
            page = act(signed_in, "reject", [pending_request])
            assert page.status_code == 200
            assert page.context["form"].fields["reason"].required
            unexplained = act(signed_in, "reject", [pending_request], apply="1", reason=" ")
            assert unexplained.context["form"].errors == {"reason": ["This field is required."]}

        response = act(signed_in, "reject", [pending_request], apply="1", reason="Out of budget")

        assert messages_of(response) == ["Rejected 1 change request."]
        pending_request.refresh_from_db()
        assert (pending_request.state, pending_request.decision_reason) == (
            "REJECTED",
            "Out of budget",
        )

    def test_it_refuses_a_staff_member_who_does_not_administer_the_cluster(
        self, client, pending_request
    ):
        # is_staff only opens the admin site; deciding needs the cluster's admin role, and
        # without it the cluster's requests are not even listed.
        client.force_login(_staff_with_perms())
        with unchanged():
            listed = client.get(url(ChangeRequest, "changelist"))
            act(client, "approve", [pending_request])
            page = client.post(
                url(ChangeRequest, "decide", pending_request.pk),
                {"decision": "approve", "reason": ""},
            )
        assert listed.context["cl"].result_count == 0
        assert (page.status_code, page["Location"]) == (302, reverse("admin:index"))

    def test_a_cluster_admin_is_refused_when_the_service_refuses(
        self, client, dana, pending_request
    ):
        # Listed, but the service still decides: here a request already decided.
        dana.is_staff = True
        dana.save()
        dana.user_permissions.set(_staff_with_perms().user_permissions.all())
        services.change_request_reject(actor=dana, request=pending_request, reason="No")
        pending_request.refresh_from_db()
        client.force_login(dana)
        with unchanged():
            response = act(client, "approve", [pending_request])
        assert messages_of(response) == [
            f"{pending_request}: This request is already rejected; only a pending request "
            "can be approved."
        ]


def _staff_with_perms() -> User:
    """eve: signs in to the admin and may decide requests, but administers no cluster."""
    eve = make_user("eve", is_staff=True)
    eve.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="allocations",
            codename__in=["view_changerequest", "change_changerequest"],
        )
    )
    return eve


class TestDecidePage:
    def test_it_is_linked_from_the_list_and_the_request(self, signed_in, pending_request):
        decide = url(ChangeRequest, "decide", pending_request.pk)
        assert decide in signed_in.get(url(ChangeRequest, "changelist")).content.decode()
        page = signed_in.get(url(ChangeRequest, "change", pending_request.pk))
        assert decide in page.content.decode()
        assert signed_in.get(decide).status_code == 200

    def test_it_approves_another_amount_as_the_service_does(
        self, signed_in, superuser, pending_request, twin
    ):
        response = signed_in.post(
            url(ChangeRequest, "decide", pending_request.pk),
            {"decision": "approve", "su_approved": "800", "reason": "Budget is tight"},
        )

        assert response.status_code == 302
        services.change_request_approve(
            actor=superuser, request=twin, su_approved="800", reason="Budget is tight"
        )
        assert decision_record(pending_request) == decision_record(twin)
        diff = AllocationChange.objects.get(change_request=pending_request)
        assert (diff.su_delta, diff.su_budget) == (800, 800)
        assert pending_request.su_approved == 800
        assert pending_request.events.filter(kind="APPROVED").count() == 1

    def test_it_wants_a_reason_for_another_amount(self, signed_in, pending_request):
        with unchanged():
            response = signed_in.post(
                url(ChangeRequest, "decide", pending_request.pk),
                {"decision": "approve", "su_approved": "800", "reason": ""},
            )
        assert response.status_code == 200
        assert response.context["form"].errors == {
            "reason": ["Say why you approve a different amount than requested."]
        }

    def test_it_rejects_and_comments(self, signed_in, superuser, pending_request):
        decide = url(ChangeRequest, "decide", pending_request.pk)
        no_reason = signed_in.post(decide, {"decision": "reject", "reason": ""})
        assert no_reason.context["form"].errors == {"reason": ["Say why you reject this request."]}

        signed_in.post(decide, {"decision": "comment", "reason": "Which GPUs?"})
        signed_in.post(decide, {"decision": "reject", "reason": "Not this year"})

        pending_request.refresh_from_db()
        assert pending_request.state == "REJECTED"
        events = pending_request.events.values_list("kind", "actor", "text")
        assert list(events) == [
            ("CREATED", pending_request.requester_id, ""),
            ("COMMENTED", superuser.pk, "Which GPUs?"),
            ("REJECTED", superuser.pk, "Not this year"),
        ]

    def test_it_shows_a_refusal_that_names_no_field(self, signed_in, allocation):
        decided = ChangeRequest.objects.get(allocation=allocation)
        with unchanged():
            response = signed_in.post(
                url(ChangeRequest, "decide", decided.pk), {"decision": "approve", "reason": ""}
            )
        assert response.context["form"].non_field_errors() == [
            "This request is already approved; only a pending request can be approved."
        ]


def _allocation_form(**data) -> dict:
    return {"status": "ACTIVE", "end": "2026-12-31", "su_delta": "", "reason": ""} | data


class TestAllocationAdmin:
    def test_it_keeps_creation_fields_and_totals_read_only(self, signed_in, allocation):
        response = signed_in.get(url(Allocation, "change", allocation.pk))
        assert set(response.context["adminform"].form.fields) == {
            "status",
            "end",
            "su_delta",
            "reason",
        }

    def test_it_links_to_the_allocations_history(self, signed_in, allocation):
        page = signed_in.get(url(Allocation, "change", allocation.pk))
        history = f"{url(AllocationChange, 'changelist')}?allocation__id__exact={allocation.pk}"
        assert history in page.content.decode()
        diffs = signed_in.get(history).context["cl"].result_list
        assert [diff.kind for diff in diffs] == ["CREATED", "REQUEST"]

    def test_it_changes_an_allocation_with_one_diff(self, signed_in, superuser, allocation):
        response = signed_in.post(
            url(Allocation, "change", allocation.pk),
            _allocation_form(su_delta="500", end="2027-03-31", reason="Top-up", su_budget="9"),
        )

        assert response.status_code == 302
        diff = allocation.changes.latest("id")
        assert (diff.kind, diff.su_delta, diff.su_budget, diff.end, diff.actor) == (
            "ADMIN",
            500,
            1500,
            dt.date(2027, 3, 31),
            superuser,
        )
        assert diff.status == ""  # unchanged fields are not part of the diff
        allocation.refresh_from_db()
        assert (allocation.su_budget, allocation.end) == (1500, dt.date(2027, 3, 31))

    def test_it_shows_the_services_refusals_beside_the_fields(self, signed_in, allocation):
        with unchanged():
            no_reason = signed_in.post(
                url(Allocation, "change", allocation.pk), _allocation_form(su_delta="5")
            )
            too_much = signed_in.post(
                url(Allocation, "change", allocation.pk),
                _allocation_form(su_delta="-2000", reason="Give back"),
            )
        assert no_reason.status_code == 200
        assert no_reason.context["adminform"].form.errors == {
            "reason": ["Say why you make this change."]
        }
        assert list(too_much.context["adminform"].form.errors) == ["su_delta"]

    def test_it_adds_an_allocation_as_a_request(self, signed_in, superuser, project, cluster, gpu):
        response = signed_in.post(
            url(Allocation, "add"),
            {
                "project": project.pk,
                "cluster": cluster.pk,
                "name": "folding-new",
                "resources": [gpu.pk],
                "start": "2026-01-01",
                "end": "2026-06-30",
                "su_amount": "250",
                "justification": "Pilot",
                "priority": "2",
            },
        )

        assert response.status_code == 302
        allocation = Allocation.objects.get(name="folding-new")
        assert (allocation.status, allocation.su_budget) == ("INACTIVE", 0)
        request = allocation.change_requests.get()
        assert (request.state, request.su_delta, request.requester) == ("PENDING", 250, superuser)


class TestRateAdmin:
    def test_it_adds_a_rate_through_the_service(self, signed_in, superuser, world):
        response = signed_in.post(
            url(Rate, "add"),
            {
                "resource": world.spare.pk,
                "su_per_unit_hour": "0.5",
                "start_0": "2026-01-01",
                "start_1": "00:00:00",
                "reason": "Launch",
            },
        )
        assert response.status_code == 302
        rate = world.spare.rates.get()
        assert (rate.su_per_unit_hour, rate.end, rate.created_by) == (
            Decimal("0.5"),
            None,
            superuser,
        )

    def test_it_shows_an_overlap_as_a_form_error(self, signed_in, gpu):
        with unchanged():
            response = signed_in.post(
                url(Rate, "add"),
                {
                    "resource": gpu.pk,
                    "su_per_unit_hour": "3",
                    "start_0": "2026-01-01",
                    "start_1": "00:00:00",
                },
            )
        assert response.status_code == 200
        assert response.context["adminform"].form.errors == {
            "start": [
                "This window overlaps the rate window 2025-01-01 00:00 to open UTC "
                "(2.000000 SU per GPU-hour)."
            ]
        }

    def test_it_only_ends_or_corrects_an_existing_rate(self, signed_in, gpu):
        rate = gpu.rates.get()
        page = signed_in.get(url(Rate, "change", rate.pk))
        assert set(page.context["adminform"].form.fields) == {
            "end",
            "close_reason",
            "corrected_su_per_unit_hour",
            "correction_reason",
        }

        response = signed_in.post(
            url(Rate, "change", rate.pk),
            {"end_0": "2027-01-01", "end_1": "00:00:00", "close_reason": "New hardware"},
        )

        assert response.status_code == 302
        rate.refresh_from_db()
        assert rate.end == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
        assert rate.su_per_unit_hour == 2

    def test_it_corrects_a_rate_and_re_rates_its_usage(
        self, signed_in, superuser, allocation, bob, gpu, django_capture_on_commit_callbacks
    ):
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, bob, gpu, "9", 10)
        )
        rate = gpu.rates.get()

        with django_capture_on_commit_callbacks(execute=True):
            response = signed_in.post(
                url(Rate, "change", rate.pk),
                {"corrected_su_per_unit_hour": "3", "correction_reason": "Invoice typo"},
            )

        assert response.status_code == 302
        rate.refresh_from_db()
        assert (rate.su_per_unit_hour, rate.end) == (3, None)
        correction = rate.corrections.get()
        assert (correction.actor, correction.reason) == (superuser, "Invoice typo")
        assert correction.rerated_at is not None
        allocation.refresh_from_db()
        assert allocation.su_used == 30  # 10 GPU-hours at 3 SU, the first 20 SU kept visible

    def test_it_refuses_a_correction_without_a_reason_beside_the_field(self, signed_in, gpu):
        rate = gpu.rates.get()
        with unchanged():
            response = signed_in.post(
                url(Rate, "change", rate.pk), {"corrected_su_per_unit_hour": "3"}
            )
        assert response.context["adminform"].form.errors == {
            "correction_reason": ["Say why the rate is corrected."]
        }


class TestMembershipAdmin:
    def test_it_adds_a_member_through_the_service(self, signed_in, superuser, allocation, charlie):
        response = signed_in.post(
            url(Membership, "add"),
            {"allocation": allocation.pk, "user": charlie.pk, "su_cap": "100", "reason": "Intern"},
        )
        assert response.status_code == 302
        membership = Membership.objects.get(allocation=allocation, user=charlie)
        assert (membership.su_cap, membership.start) == (100, allocation.start)
        change = membership.changes.get()
        assert (change.kind, change.actor, change.reason) == ("ADDED", superuser, "Intern")

    def test_it_refuses_a_cap_above_the_budget_beside_the_field(self, signed_in, allocation):
        bob_membership = allocation.memberships.get(user__username="bob")
        with unchanged():
            response = signed_in.post(
                url(Membership, "change", bob_membership.pk), {"su_cap": "5000", "reason": ""}
            )
        assert response.context["adminform"].form.errors == {
            "su_cap": ["A cap of 5000 SUs is above the allocation's budget of 1000.0000 SUs."]
        }

    def test_it_freezes_and_reactivates_with_a_reason(self, signed_in, superuser, allocation):
        bob_membership = allocation.memberships.get(user__username="bob")
        act(signed_in, "freeze", [bob_membership], apply="1", reason="Left the group")
        bob_membership.refresh_from_db()
        assert bob_membership.status == "INACTIVE"

        response = act(signed_in, "reactivate", [bob_membership], apply="1", reason="Back")

        assert messages_of(response)[-1] == "Set to ACTIVE: 1 membership."
        statuses = bob_membership.changes.filter(kind="STATUS").values_list("status", "reason")
        assert list(statuses) == [("INACTIVE", "Left the group"), ("ACTIVE", "Back")]


class TestProjectAdmin:
    def test_it_creates_a_project_with_managers_through_the_services(
        self, signed_in, superuser, alice, bob
    ):
        response = signed_in.post(
            url(Project, "add"),
            {
                "title": "Climate",
                "description": "",
                "pi": alice.pk,
                "managers": [bob.pk],
                "origination": "LOCAL",
                "originated_id": "",
            },
        )
        assert response.status_code == 302
        project = Project.objects.get(title="Climate")
        assert list(project.managers.all()) == [bob]
        kinds = project.changes.values_list("kind", "subject", "actor")
        assert list(kinds) == [
            ("CREATED", None, superuser.pk),
            ("MANAGER_ADDED", bob.pk, superuser.pk),
        ]

    def test_it_names_the_pi_as_manager_a_form_error(self, signed_in, project, alice):
        with unchanged():
            response = signed_in.post(
                url(Project, "change", project.pk),
                {"title": "Renamed", "description": "", "managers": [alice.pk]},
            )
        assert response.context["adminform"].form.errors == {
            "managers": ["alice already manages this project."]
        }

    def test_it_freezes_a_project_with_a_reason(self, signed_in, superuser, project):
        response = act(signed_in, "freeze", [project], apply="1", reason="Audit")
        assert messages_of(response) == ["Set to INACTIVE: 1 project."]
        project.refresh_from_db()
        assert project.status == "INACTIVE"
        assert project.changes.get(kind="STATUS").reason == "Audit"


def test_usage_changelist_skips_the_full_count(signed_in, world):
    response = signed_in.get(url(Usage, "changelist"), {"q": "1"})
    assert response.context["cl"].full_result_count is None
    assert [row.job_id for row in response.context["cl"].result_list] == ["1"]
