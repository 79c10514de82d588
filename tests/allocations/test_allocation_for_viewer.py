"""selectors.allocation_for_viewer is allocation_list_for's rule for one allocation, in
SQL of its own: it must agree with allocation_list_for for every kind of viewer."""

import uuid

import pytest

from allocations import selectors, services
from allocations.models import Membership, Status
from tests.conftest import make_user


@pytest.fixture
def erin(org, allocation, alice):
    """A co-PI: a manager of the project, not a member of the allocation."""
    erin = make_user("erin", org)
    services.project_add_manager(actor=alice, project=allocation.project, user=erin)
    return erin


def set_status(allocation, user, status):
    Membership.objects.filter(allocation=allocation, user=user).update(status=status)


class TestAllocationForViewer:
    @pytest.mark.parametrize(
        ("who", "manages", "administers"),
        [
            ("alice", True, False),  # the PI
            ("erin", True, False),  # a manager
            ("bob", False, False),  # a member
            ("dana", False, True),  # the cluster's admin
            ("staff", True, True),  # a superuser
        ],
    )
    def test_it_finds_the_allocation_for_whoever_may_see_it(
        self, request, allocation, erin, who, manages, administers
    ):
        user = request.getfixturevalue(who)

        found = selectors.allocation_for_viewer(user=user, code=allocation.code)

        assert found == allocation
        assert (found.viewer_manages, found.viewer_administers) == (manages, administers)
        assert allocation in selectors.allocation_list_for(user=user)

    def test_it_finds_nothing_for_an_outsider(self, allocation, charlie):
        assert selectors.allocation_for_viewer(user=charlie, code=allocation.code) is None
        assert allocation not in selectors.allocation_list_for(user=charlie)

    def test_it_finds_nothing_for_an_unknown_code(self, allocation, staff, alice):
        assert selectors.allocation_for_viewer(user=staff, code=uuid.uuid4()) is None
        assert selectors.allocation_for_viewer(user=alice, code=uuid.uuid4()) is None

    @pytest.mark.parametrize(
        ("status", "sees"),
        [(Status.ACTIVE, True), (Status.INACTIVE, True), (Status.DELETED, False)],
    )
    def test_a_member_sees_it_while_their_membership_is_not_removed(
        self, allocation, bob, status, sees
    ):
        set_status(allocation, bob, status)

        found = selectors.allocation_for_viewer(user=bob, code=allocation.code)

        assert (found is not None) is sees
        assert (allocation in selectors.allocation_list_for(user=bob)) is sees

    def test_a_membership_elsewhere_does_not_count(
        self, allocation, alice, bob, cluster, gpu, charlie
    ):
        other = services.project_create(actor=alice, title="Other", pi=alice)
        request = services.allocation_request_create(
            actor=alice,
            project=other,
            cluster=cluster,
            name="other-gpu",
            resources=[gpu],
            su_amount="10",
            start=allocation.start,
            end=allocation.end,
            justification="More runs",
        )
        services.change_request_approve(actor=cluster.admins.get(), request=request)
        services.membership_add(actor=alice, allocation=request.allocation, user=charlie)

        assert selectors.allocation_for_viewer(user=charlie, code=allocation.code) is None
        assert selectors.allocation_for_viewer(user=charlie, code=request.allocation.code)


class TestProjectForViewer:
    @pytest.mark.parametrize(
        ("who", "manages"), [("alice", True), ("erin", True), ("bob", False), ("staff", True)]
    )
    def test_it_finds_the_project_for_whoever_may_see_it(
        self, request, allocation, erin, who, manages
    ):
        user = request.getfixturevalue(who)

        found = selectors.project_for_viewer(user=user, code=allocation.project.code)

        assert found == allocation.project
        assert found.viewer_manages is manages
        assert allocation.project in selectors.project_list_for(user=user)

    @pytest.mark.parametrize("who", ["charlie", "dana"])
    def test_it_finds_nothing_for_an_outsider_or_the_clusters_admin(self, request, allocation, who):
        # As in project_list_for, administering a cluster shows its allocations, not
        # the projects they belong to.
        user = request.getfixturevalue(who)

        assert selectors.project_for_viewer(user=user, code=allocation.project.code) is None
        assert allocation.project not in selectors.project_list_for(user=user)

    def test_a_removed_member_no_longer_sees_it(self, allocation, bob):
        set_status(allocation, bob, Status.DELETED)

        assert selectors.project_for_viewer(user=bob, code=allocation.project.code) is None
        assert allocation.project not in selectors.project_list_for(user=bob)

    def test_its_allocations_are_those_the_viewer_may_see(
        self, allocation, alice, bob, cluster, gpu
    ):
        request = services.allocation_request_create(
            actor=alice,
            project=allocation.project,
            cluster=cluster,
            name="second",
            resources=[gpu],
            su_amount="10",
            start=allocation.start,
            end=allocation.end,
            justification="More runs",
        )
        services.change_request_approve(actor=cluster.admins.get(), request=request)

        for user, expected in [(alice, {allocation, request.allocation}), (bob, {allocation})]:
            project = selectors.project_for_viewer(user=user, code=allocation.project.code)
            listed = set(selectors.project_allocations_for(user=user, project=project))
            assert listed == expected
            assert listed == set(
                selectors.allocation_list_for(user=user).filter(project=allocation.project)
            )
