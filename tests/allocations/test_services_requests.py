import datetime as dt
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.utils import timezone

from allocations import services
from allocations.models import (
    Allocation,
    AllocationChange,
    ChangeRequest,
    ChangeRequestEvent,
    Cluster,
    Resource,
)
from tests.allocations.dbstate import concurrently, unchanged
from tests.conftest import END, START, make_user, usage


def _request_new(actor, project, cluster, resources, **overrides):
    values = {
        "name": "folding-cpu",
        "su_amount": "500",
        "start": START,
        "end": END,
        "justification": "Analysis",
    }
    return services.allocation_request_create(
        actor=actor,
        project=project,
        cluster=cluster,
        resources=resources,
        **(values | overrides),
    )


@pytest.fixture
def more(allocation, alice):
    """alice's pending request for 500 more SUs on her 1,000 SU allocation."""
    return services.change_request_submit(
        actor=alice, allocation=allocation, su_delta="500", justification="Bigger models"
    )


@pytest.fixture
def eve(org):
    """An admin of another cluster."""
    eve = make_user("eve", org)
    Cluster.objects.create(name="cpu2").admins.add(eve)
    return eve


class TestAllocationRequestCreate:
    def test_the_pi_gets_an_inactive_allocation_with_a_pending_request(
        self, alice, project, cluster, gpu, cpu
    ):
        request = _request_new(alice, project, cluster, [gpu, cpu])

        allocation = request.allocation
        assert (allocation.status, allocation.su_budget, allocation.start, allocation.end) == (
            "INACTIVE",
            0,
            START,
            END,
        )
        assert set(allocation.resources.all()) == {gpu, cpu}
        created = allocation.changes.get()
        assert (created.kind, created.su_budget, created.status, created.actor) == (
            "CREATED",
            0,
            "INACTIVE",
            alice,
        )
        assert (request.kind, request.state, request.su_delta, request.requester) == (
            "NEW",
            "PENDING",
            Decimal(500),
            alice,
        )
        assert (request.requested_status, request.requested_end) == ("ACTIVE", END)
        event = request.events.get()
        assert (event.kind, event.actor) == ("CREATED", alice)
        member = allocation.memberships.get()
        assert (member.user, member.status, member.su_cap) == (alice, "ACTIVE", None)
        assert (member.changes.get().kind, member.changes.get().actor) == ("ADDED", alice)

    def test_a_manager_may_request_and_the_pi_becomes_the_member(
        self, alice, bob, project, cluster, gpu
    ):
        services.project_add_manager(actor=alice, project=project, user=bob)

        request = _request_new(bob, project, cluster, [gpu])

        assert request.requester == bob
        assert [m.user for m in request.allocation.memberships.all()] == [alice]

    @pytest.mark.parametrize("who", ["bob", "charlie", "dana"])
    def test_it_refuses_members_outsiders_and_cluster_admins(
        self, request, allocation, cluster, gpu, who
    ):
        # bob is a member of the project's allocation, which gives no right to ask for more.
        actor = request.getfixturevalue(who)
        with unchanged(), pytest.raises(PermissionDenied):
            _request_new(actor, allocation.project, cluster, [gpu])

    def test_it_refuses_resources_of_another_cluster(self, alice, project, cluster, gpu):
        other = Cluster.objects.create(name="cpu2")
        epyc = Resource.objects.create(cluster=other, name="EPYC", kind="CPU", unit="core")
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            _request_new(alice, project, cluster, [gpu, epyc])
        assert excinfo.value.message_dict == {"resources": ["Not on gpu1: EPYC."]}

    def test_it_refuses_no_resources(self, alice, project, cluster):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            _request_new(alice, project, cluster, [])
        assert "resources" in excinfo.value.message_dict

    @pytest.mark.parametrize("amount", ["0", "-5", "0.0000"])
    def test_it_refuses_a_non_positive_amount(self, alice, project, cluster, gpu, amount):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            _request_new(alice, project, cluster, [gpu], su_amount=amount)
        assert "su_amount" in excinfo.value.message_dict

    @pytest.mark.parametrize("amount", [12.5, "lots", "NaN", "1.00001"])
    def test_it_refuses_an_amount_that_is_not_an_exact_su_amount(
        self, alice, project, cluster, gpu, amount
    ):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            _request_new(alice, project, cluster, [gpu], su_amount=amount)
        assert "su_amount" in excinfo.value.message_dict

    def test_it_refuses_an_end_before_the_start(self, alice, project, cluster, gpu):
        with unchanged(), pytest.raises(ValidationError, match="cannot be before the start"):
            _request_new(alice, project, cluster, [gpu], end=START - dt.timedelta(days=1))

    def test_it_refuses_a_name_the_cluster_already_has(self, alice, pending_request, cluster, gpu):
        with unchanged(), pytest.raises(ValidationError, match="already has an allocation"):
            _request_new(
                alice, pending_request.allocation.project, cluster, [gpu], name="folding-gpu"
            )

    def test_it_refuses_an_inactive_project(self, alice, staff, project, cluster, gpu):
        services.project_set_status(actor=staff, project=project, status="INACTIVE", reason="x")
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            _request_new(alice, project, cluster, [gpu])
        assert "project" in excinfo.value.message_dict

    def test_it_requires_a_justification(self, alice, project, cluster, gpu):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            _request_new(alice, project, cluster, [gpu], justification=" ")
        assert "justification" in excinfo.value.message_dict


class TestChangeRequestSubmit:
    def test_it_asks_for_more_sus_without_touching_the_allocation(self, allocation, alice, more):
        assert (more.kind, more.state, more.su_delta, more.requester) == (
            "CHANGE",
            "PENDING",
            Decimal(500),
            alice,
        )
        assert (more.requested_status, more.requested_end) == ("", None)
        assert [(e.kind, e.actor) for e in more.events.all()] == [("CREATED", alice)]
        allocation.refresh_from_db()
        assert allocation.su_budget == 1000
        assert allocation.changes.count() == 2

    def test_it_gives_back_unused_sus(self, allocation, alice, bob, gpu):
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, bob, gpu, "1", 100)
        )
        allocation.refresh_from_db()

        request = services.change_request_submit(
            actor=alice, allocation=allocation, su_delta="-800", justification="Not needed"
        )

        assert request.su_delta == -800

    def test_it_refuses_giving_back_more_than_is_unused(self, allocation, alice, bob, gpu):
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, bob, gpu, "1", 100)
        )
        allocation.refresh_from_db()
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.change_request_submit(
                actor=alice, allocation=allocation, su_delta="-801", justification="Not needed"
            )
        assert excinfo.value.message_dict == {
            "su_delta": ["At most 800.0000 unused SUs can be given back."]
        }

    def test_it_asks_for_an_extension(self, allocation, alice):
        request = services.change_request_submit(
            actor=alice,
            allocation=allocation,
            requested_end=dt.date(2027, 6, 30),
            justification="Paper revision",
        )

        assert (request.su_delta, request.requested_end) == (None, dt.date(2027, 6, 30))

    def test_it_refuses_an_end_before_the_start(self, allocation, alice):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.change_request_submit(
                actor=alice,
                allocation=allocation,
                requested_end=START - dt.timedelta(days=1),
                justification="Oops",
            )
        assert "requested_end" in excinfo.value.message_dict

    def test_it_asks_for_a_status_change(self, allocation, alice):
        request = services.change_request_submit(
            actor=alice, allocation=allocation, requested_status="INACTIVE", justification="Pause"
        )

        assert request.requested_status == "INACTIVE"

    def test_it_refuses_the_status_the_allocation_already_has(self, allocation, alice):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.change_request_submit(
                actor=alice, allocation=allocation, requested_status="ACTIVE", justification="On"
            )
        assert "requested_status" in excinfo.value.message_dict

    def test_it_refuses_a_request_that_asks_nothing(self, allocation, alice):
        with unchanged(), pytest.raises(ValidationError, match="Ask for SUs, an end date"):
            services.change_request_submit(actor=alice, allocation=allocation, justification="Hi")

    def test_it_refuses_a_change_of_zero_sus(self, allocation, alice):
        with unchanged(), pytest.raises(ValidationError, match="0 SUs changes nothing"):
            services.change_request_submit(
                actor=alice, allocation=allocation, su_delta="0", justification="Hi"
            )

    def test_it_requires_a_justification(self, allocation, alice):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.change_request_submit(
                actor=alice, allocation=allocation, su_delta="10", justification=""
            )
        assert "justification" in excinfo.value.message_dict

    @pytest.mark.parametrize("who", ["bob", "charlie", "dana"])
    def test_it_refuses_anyone_who_does_not_manage_the_project(self, request, allocation, who):
        actor = request.getfixturevalue(who)
        with unchanged(), pytest.raises(PermissionDenied):
            services.change_request_submit(
                actor=actor,
                allocation=allocation,
                su_delta="10",
                justification="More",
            )

    def test_it_refuses_a_closed_allocation(self, allocation, alice, dana):
        services.allocation_set_status(
            actor=dana, allocation=allocation, status="DELETED", reason="Closed"
        )
        with unchanged(), pytest.raises(ValidationError, match="closed"):
            services.change_request_submit(
                actor=alice, allocation=allocation, su_delta="10", justification="More"
            )


class TestChangeRequestApprove:
    def test_approving_a_new_allocation_activates_it(self, pending_request, dana):
        allocation = pending_request.allocation

        change = services.change_request_approve(actor=dana, request=pending_request)

        allocation.refresh_from_db()
        assert (allocation.status, allocation.su_budget, allocation.end) == ("ACTIVE", 1000, END)
        assert list(allocation.changes.values_list("kind", flat=True)) == ["CREATED", "REQUEST"]
        assert (change.kind, change.su_delta, change.su_budget, change.status, change.end) == (
            "REQUEST",
            1000,
            1000,
            "ACTIVE",
            END,
        )
        assert (change.change_request, change.actor) == (pending_request, dana)
        pending_request.refresh_from_db()
        assert (pending_request.state, pending_request.decided_by) == ("APPROVED", dana)
        assert pending_request.su_approved == 1000
        assert timezone.now() - pending_request.decided_at < dt.timedelta(minutes=1)
        assert list(pending_request.events.values_list("kind", "actor__username")) == [
            ("CREATED", "alice"),
            ("APPROVED", "dana"),
        ]

    def test_it_grants_what_was_asked_with_exactly_one_diff(self, allocation, more, dana):
        before = AllocationChange.objects.count()

        change = services.change_request_approve(actor=dana, request=more)

        assert AllocationChange.objects.count() == before + 1
        assert (change.su_delta, change.su_budget, change.status, change.end) == (
            500,
            1500,
            "",
            None,
        )
        allocation.refresh_from_db()
        assert (allocation.su_budget, allocation.status, allocation.end) == (1500, "ACTIVE", END)

    def test_it_requires_a_reason_to_grant_another_amount(self, allocation, more, dana):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.change_request_approve(actor=dana, request=more, su_approved="200")
        assert "reason" in excinfo.value.message_dict

    def test_it_grants_another_amount_with_a_reason(self, allocation, more, dana):
        change = services.change_request_approve(
            actor=dana, request=more, su_approved="200", reason="Cluster is full this quarter"
        )

        assert (change.su_delta, change.su_budget) == (200, 1200)
        assert change.reason == "Cluster is full this quarter"
        more.refresh_from_db()
        assert (more.su_approved, more.decision_reason) == (200, "Cluster is full this quarter")
        assert more.events.last().text == "Cluster is full this quarter"
        allocation.refresh_from_db()
        assert allocation.su_budget == 1200

    def test_it_refuses_approving_twice_with_a_clear_message(self, allocation, more, dana):
        services.change_request_approve(actor=dana, request=more)
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.change_request_approve(actor=dana, request=more)
        assert excinfo.value.messages == [
            "This request is already approved; only a pending request can be approved."
        ]

    def test_it_refuses_approving_a_stale_copy_of_a_decided_request(self, allocation, more, dana):
        stale = ChangeRequest.objects.get(pk=more.pk)
        services.change_request_approve(actor=dana, request=more)
        with unchanged(), pytest.raises(ValidationError, match="already approved"):
            services.change_request_approve(actor=dana, request=stale)

    @pytest.mark.parametrize(
        ("decide", "state"),
        [
            (
                lambda r, alice, dana: services.change_request_cancel(actor=alice, request=r),
                "cancelled",
            ),
            (
                lambda r, alice, dana: services.change_request_reject(
                    actor=dana, request=r, reason="No"
                ),
                "rejected",
            ),
        ],
    )
    def test_it_refuses_approving_a_decided_request(self, more, alice, dana, decide, state):
        decide(more, alice, dana)
        with unchanged(), pytest.raises(ValidationError, match=f"already {state}"):
            services.change_request_approve(actor=dana, request=more)

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie", "eve"])
    def test_it_refuses_anyone_but_the_clusters_admins(self, request, more, eve, who):
        actor = request.getfixturevalue(who)
        with unchanged(), pytest.raises(PermissionDenied):
            services.change_request_approve(actor=actor, request=more)

    def test_it_refuses_a_give_back_that_usage_has_since_spent(
        self, allocation, alice, bob, dana, gpu
    ):
        give_back = services.change_request_submit(
            actor=alice, allocation=allocation, su_delta="-900", justification="Done early"
        )
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, bob, gpu, "1", 100)
        )
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.change_request_approve(actor=dana, request=give_back)
        assert excinfo.value.message_dict == {
            "su_delta": [
                "At most 800.0000 unused SUs can be given back; "
                "200.0000 SUs are used and 0.0000 held."
            ]
        }

    def test_it_refuses_a_budget_below_zero(self, allocation, alice, dana):
        give_back = services.change_request_submit(
            actor=alice, allocation=allocation, su_delta="-900", justification="Done early"
        )
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.change_request_approve(
                actor=dana, request=give_back, su_approved="-1000.0001", reason="Take it all"
            )
        assert excinfo.value.message_dict == {
            "su_delta": ["This would make the budget -0.0001 SUs; it cannot go below 0."]
        }

    def test_it_refuses_a_new_allocation_without_sus(self, pending_request, dana):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.change_request_approve(
                actor=dana, request=pending_request, su_approved="0", reason="Nothing"
            )
        assert "su_approved" in excinfo.value.message_dict

    def test_it_applies_a_status_change(self, allocation, alice, dana):
        pause = services.change_request_submit(
            actor=alice, allocation=allocation, requested_status="INACTIVE", justification="Pause"
        )

        change = services.change_request_approve(actor=dana, request=pause)

        allocation.refresh_from_db()
        assert (allocation.status, allocation.su_budget) == ("INACTIVE", 1000)
        assert (change.status, change.su_delta, change.su_budget) == ("INACTIVE", 0, 1000)

    def test_it_applies_an_extension(self, allocation, alice, dana):
        extend = services.change_request_submit(
            actor=alice,
            allocation=allocation,
            requested_end=dt.date(2027, 3, 31),
            justification="Revision",
        )

        change = services.change_request_approve(actor=dana, request=extend)

        allocation.refresh_from_db()
        assert allocation.end == change.end == dt.date(2027, 3, 31)


class TestChangeRequestReject:
    def test_it_rejects_with_a_reason_and_leaves_the_allocation_alone(self, allocation, more, dana):
        changes = AllocationChange.objects.count()

        services.change_request_reject(actor=dana, request=more, reason="Over capacity")

        more.refresh_from_db()
        assert (more.state, more.decided_by, more.decision_reason) == (
            "REJECTED",
            dana,
            "Over capacity",
        )
        assert more.decided_at is not None
        assert more.su_approved is None
        event = more.events.last()
        assert (event.kind, event.actor, event.text) == ("REJECTED", dana, "Over capacity")
        assert AllocationChange.objects.count() == changes
        allocation.refresh_from_db()
        assert allocation.su_budget == 1000

    def test_it_requires_a_reason(self, more, dana):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.change_request_reject(actor=dana, request=more, reason=" ")
        assert "reason" in excinfo.value.message_dict

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
    def test_it_refuses_anyone_but_the_clusters_admins(self, request, more, who):
        actor = request.getfixturevalue(who)
        with unchanged(), pytest.raises(PermissionDenied):
            services.change_request_reject(actor=actor, request=more, reason="No")

    def test_it_refuses_a_decided_request(self, more, dana):
        services.change_request_approve(actor=dana, request=more)
        with unchanged(), pytest.raises(ValidationError, match="already approved"):
            services.change_request_reject(actor=dana, request=more, reason="Changed my mind")


class TestChangeRequestCancel:
    def test_the_requester_cancels_their_request(self, more, alice):
        services.change_request_cancel(actor=alice, request=more, reason=" Not needed ")

        more.refresh_from_db()
        assert (more.state, more.decided_by, more.decision_reason) == (
            "CANCELLED",
            alice,
            "Not needed",
        )
        assert more.decided_at is not None
        event = more.events.last()
        assert (event.kind, event.actor, event.text) == ("CANCELLED", alice, "Not needed")

    def test_the_pi_cancels_a_managers_request(self, allocation, alice, bob):
        services.project_add_manager(actor=alice, project=allocation.project, user=bob)
        request = services.change_request_submit(
            actor=bob, allocation=allocation, su_delta="10", justification="More"
        )

        services.change_request_cancel(actor=alice, request=request)

        request.refresh_from_db()
        assert (request.state, request.decided_by) == ("CANCELLED", alice)

    @pytest.mark.parametrize("who", ["bob", "charlie", "dana"])
    def test_it_refuses_anyone_but_the_requester_and_the_project_leads(self, request, more, who):
        actor = request.getfixturevalue(who)
        with unchanged(), pytest.raises(PermissionDenied):
            services.change_request_cancel(actor=actor, request=more)

    def test_it_refuses_a_decided_request(self, more, alice, dana):
        services.change_request_approve(actor=dana, request=more)
        with unchanged(), pytest.raises(ValidationError, match="only a pending request can be"):
            services.change_request_cancel(actor=alice, request=more)


class TestChangeRequestComment:
    @pytest.mark.parametrize("who", ["alice", "dana"])
    def test_the_pi_and_the_clusters_admins_comment(self, request, more, who):
        actor = request.getfixturevalue(who)

        event = services.change_request_comment(actor=actor, request=more, text="  Any news? ")

        assert (event.kind, event.actor, event.text, event.request) == (
            "COMMENTED",
            actor,
            "Any news?",
            more,
        )
        assert event.created is not None

    @pytest.mark.parametrize("who", ["bob", "charlie"])
    def test_it_refuses_members_and_outsiders(self, request, more, who):
        actor = request.getfixturevalue(who)
        with unchanged(), pytest.raises(PermissionDenied):
            services.change_request_comment(actor=actor, request=more, text="Hello")

    def test_it_refuses_an_empty_comment(self, more, alice):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.change_request_comment(actor=alice, request=more, text="   ")
        assert "text" in excinfo.value.message_dict

    def test_it_refuses_a_comment_on_a_decided_request(self, more, alice, dana):
        services.change_request_reject(actor=dana, request=more, reason="No")
        with unchanged(), pytest.raises(ValidationError, match="commented on"):
            services.change_request_comment(actor=alice, request=more, text="Why?")


def test_every_decision_leaves_its_event(allocation, more, alice, dana):
    services.change_request_comment(actor=dana, request=more, text="Half?")
    services.change_request_approve(actor=dana, request=more, su_approved="250", reason="Half")

    assert list(
        ChangeRequestEvent.objects.filter(request=more).values_list(
            "kind", "actor__username", "text"
        )
    ) == [("CREATED", "alice", ""), ("COMMENTED", "dana", "Half?"), ("APPROVED", "dana", "Half")]
    assert Allocation.objects.get(pk=allocation.pk).su_budget == 1250


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs row locks (PostgreSQL)")
@pytest.mark.django_db(transaction=True)
def test_two_admins_approving_at_once_write_one_diff(allocation, more, dana, staff):
    outcomes = concurrently(
        lambda: services.change_request_approve(actor=dana, request=more),
        lambda: services.change_request_approve(actor=staff, request=more),
    )

    assert sorted(type(o).__name__ for o in outcomes) == ["AllocationChange", "ValidationError"]
    assert AllocationChange.objects.filter(change_request=more).count() == 1
    assert Allocation.objects.get(pk=allocation.pk).su_budget == 1500
    assert more.events.filter(kind="APPROVED").count() == 1
