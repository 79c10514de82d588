import datetime as dt
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from allocations import services
from allocations.models import Membership, MembershipChange
from tests.allocations.dbstate import unchanged
from tests.conftest import START, usage

NOT_EXACT = [
    pytest.param("lots", id="non-numeric"),
    pytest.param("NaN", id="NaN"),
    pytest.param("Infinity", id="Infinity"),
    pytest.param("-Infinity", id="-Infinity"),
    pytest.param(12.5, id="float"),
    pytest.param("1.00001", id="too-many-places"),
    pytest.param("-1", id="negative"),
]


@pytest.fixture
def bobs(allocation, bob):
    return Membership.objects.get(allocation=allocation, user=bob)


class TestMembershipAdd:
    def test_the_pi_adds_a_member_with_a_cap(self, allocation, alice, charlie):
        member = services.membership_add(
            actor=alice, allocation=allocation, user=charlie, su_cap="150", reason="Student"
        )

        assert (member.status, member.su_cap, member.start, member.end) == (
            "ACTIVE",
            150,
            START,
            None,
        )
        change = member.changes.get()
        assert (change.kind, change.su_cap, change.status, change.actor, change.reason) == (
            "ADDED",
            150,
            "ACTIVE",
            alice,
            "Student",
        )

    def test_a_cluster_admin_adds_a_member(self, allocation, dana, charlie):
        member = services.membership_add(actor=dana, allocation=allocation, user=charlie)

        assert member.su_cap is None
        assert member.changes.get().actor == dana

    @pytest.mark.parametrize("who", ["bob", "charlie"])
    def test_it_refuses_members_and_outsiders(self, request, allocation, charlie, who):
        actor = request.getfixturevalue(who)
        with unchanged(), pytest.raises(PermissionDenied):
            services.membership_add(actor=actor, allocation=allocation, user=charlie)

    def test_it_refuses_a_cap_above_the_budget_naming_both(self, allocation, alice, charlie):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.membership_add(
                actor=alice, allocation=allocation, user=charlie, su_cap="1000.0001"
            )
        assert excinfo.value.message_dict == {
            "su_cap": ["A cap of 1000.0001 SUs is above the allocation's budget of 1000.0000 SUs."]
        }

    def test_it_allows_a_cap_equal_to_the_budget(self, allocation, alice, charlie):
        member = services.membership_add(
            actor=alice, allocation=allocation, user=charlie, su_cap="1000"
        )

        assert member.su_cap == 1000

    @pytest.mark.parametrize("cap", NOT_EXACT)
    def test_it_refuses_a_cap_that_is_not_a_non_negative_su_amount(
        self, allocation, alice, charlie, cap
    ):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.membership_add(actor=alice, allocation=allocation, user=charlie, su_cap=cap)
        assert "su_cap" in excinfo.value.message_dict

    def test_it_refuses_a_current_member(self, allocation, alice, bob):
        with unchanged(), pytest.raises(ValidationError, match="already a member"):
            services.membership_add(actor=alice, allocation=allocation, user=bob)

    def test_re_adding_a_removed_member_reactivates_the_same_membership(
        self, allocation, alice, bob, bobs, gpu
    ):
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, bob, gpu, "1", 1)
        )
        services.membership_remove(actor=alice, membership=bobs)

        again = services.membership_add(
            actor=alice, allocation=allocation, user=bob, su_cap="50", reason="Back"
        )

        assert again.pk == bobs.pk
        again.refresh_from_db()
        assert (again.status, again.su_cap, again.su_used) == ("ACTIVE", 50, 2)
        assert list(again.changes.values_list("kind", "status", "su_cap", "reason")) == [
            ("ADDED", "ACTIVE", Decimal(300), ""),
            ("STATUS", "DELETED", None, "Removed"),
            ("STATUS", "ACTIVE", Decimal(50), "Back"),
        ]

    def test_re_adding_a_removed_member_takes_the_new_dates(self, allocation, alice, bob, bobs):
        services.membership_remove(actor=alice, membership=bobs)

        again = services.membership_add(
            actor=alice,
            allocation=allocation,
            user=bob,
            start=dt.date(2026, 6, 1),
            end=dt.date(2026, 8, 31),
        )

        again.refresh_from_db()
        assert (again.start, again.end) == (dt.date(2026, 6, 1), dt.date(2026, 8, 31))

    def test_it_refuses_new_dates_that_end_before_the_old_start(self, allocation, alice, bob, bobs):
        services.membership_remove(actor=alice, membership=bobs)
        with unchanged(), pytest.raises(ValidationError, match="cannot be before the start"):
            services.membership_add(
                actor=alice, allocation=allocation, user=bob, end=START - dt.timedelta(days=1)
            )

    def test_it_refuses_a_membership_ending_before_it_starts(self, allocation, alice, charlie):
        with unchanged(), pytest.raises(ValidationError, match="cannot be before the start"):
            services.membership_add(
                actor=alice,
                allocation=allocation,
                user=charlie,
                start=dt.date(2026, 6, 1),
                end=dt.date(2026, 5, 31),
            )


class TestMembershipSetCap:
    def test_the_pi_sets_a_cap(self, alice, bobs):
        services.membership_set_cap(actor=alice, membership=bobs, su_cap="500", reason="Thesis")

        bobs.refresh_from_db()
        assert bobs.su_cap == 500
        change = bobs.changes.last()
        assert (change.kind, change.su_cap, change.actor, change.reason) == (
            "CAP",
            500,
            alice,
            "Thesis",
        )

    def test_the_pi_clears_a_cap(self, alice, bobs):
        services.membership_set_cap(actor=alice, membership=bobs, su_cap=None)

        bobs.refresh_from_db()
        assert bobs.su_cap is None
        change = bobs.changes.last()
        assert (change.kind, change.su_cap) == ("CAP", None)

    def test_a_cap_of_zero_is_a_cap(self, alice, bobs):
        services.membership_set_cap(actor=alice, membership=bobs, su_cap="0")

        bobs.refresh_from_db()
        assert bobs.su_cap == 0

    @pytest.mark.parametrize("cap", NOT_EXACT)
    def test_it_refuses_a_cap_that_is_not_a_non_negative_su_amount(self, alice, bobs, cap):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.membership_set_cap(actor=alice, membership=bobs, su_cap=cap)
        assert "su_cap" in excinfo.value.message_dict

    def test_it_refuses_a_cap_above_the_budget_naming_both(self, alice, bobs):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.membership_set_cap(actor=alice, membership=bobs, su_cap="1500")
        assert excinfo.value.message_dict == {
            "su_cap": ["A cap of 1500 SUs is above the allocation's budget of 1000.0000 SUs."]
        }

    def test_it_refuses_the_cap_already_set(self, alice, bobs):
        with unchanged(), pytest.raises(ValidationError, match="already set"):
            services.membership_set_cap(actor=alice, membership=bobs, su_cap="300.00")

    @pytest.mark.parametrize("who", ["bob", "charlie"])
    def test_it_refuses_members_and_outsiders(self, request, bobs, who):
        actor = request.getfixturevalue(who)
        with unchanged(), pytest.raises(PermissionDenied):
            services.membership_set_cap(actor=actor, membership=bobs, su_cap="1000")


class TestMembershipSetStatus:
    def test_the_pi_suspends_and_restores_a_member(self, alice, bobs):
        services.membership_set_status(
            actor=alice, membership=bobs, status="INACTIVE", reason="Left for summer"
        )
        services.membership_set_status(actor=alice, membership=bobs, status="ACTIVE")

        bobs.refresh_from_db()
        assert bobs.status == "ACTIVE"
        assert list(bobs.changes.values_list("kind", "status", "actor__username", "reason"))[
            1:
        ] == [
            ("STATUS", "INACTIVE", "alice", "Left for summer"),
            ("STATUS", "ACTIVE", "alice", ""),
        ]

    def test_removing_a_member_keeps_the_row_and_its_history(self, alice, bobs):
        services.membership_remove(actor=alice, membership=bobs)

        bobs.refresh_from_db()
        assert bobs.status == "DELETED"
        change = bobs.changes.last()
        assert (change.kind, change.status, change.actor, change.reason) == (
            "STATUS",
            "DELETED",
            alice,
            "Removed",
        )
        assert MembershipChange.objects.filter(membership=bobs).count() == 2

    def test_it_refuses_the_status_the_member_already_has(self, alice, bobs):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.membership_set_status(actor=alice, membership=bobs, status="ACTIVE")
        assert "status" in excinfo.value.message_dict

    def test_it_refuses_an_unknown_status(self, alice, bobs):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.membership_set_status(actor=alice, membership=bobs, status="BANNED")
        assert "status" in excinfo.value.message_dict

    @pytest.mark.parametrize("who", ["bob", "charlie"])
    def test_it_refuses_members_and_outsiders(self, request, allocation, alice, who):
        actor = request.getfixturevalue(who)
        alices = Membership.objects.get(allocation=allocation, user=alice)
        with unchanged(), pytest.raises(PermissionDenied):
            services.membership_remove(actor=actor, membership=alices)
