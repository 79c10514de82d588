import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from allocations import services
from allocations.models import Allocation, AllocationChange, Cluster, Membership, ProjectChange
from allocations.selectors import user_manages_project
from tests.allocations.dbstate import unchanged
from tests.conftest import END, START, make_user


class TestProjectCreate:
    def test_it_creates_a_project_led_by_the_actor(self, alice):
        project = services.project_create(actor=alice, title="  Protein folding ", pi=alice)

        assert (project.title, project.pi, project.status) == ("Protein folding", alice, "ACTIVE")
        change = project.changes.get()
        assert (change.kind, change.status, change.actor) == ("CREATED", "ACTIVE", alice)
        assert change.created is not None

    def test_it_lets_staff_create_a_project_for_a_pi(self, staff, alice):
        project = services.project_create(actor=staff, title="Imported", pi=alice)

        assert project.pi == alice
        assert project.changes.get().actor == staff

    def test_it_refuses_to_create_a_project_for_someone_else(self, alice, bob):
        with unchanged(), pytest.raises(PermissionDenied):
            services.project_create(actor=alice, title="For Bob", pi=bob)

    def test_it_refuses_an_empty_title(self, alice):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.project_create(actor=alice, title="   ", pi=alice)
        assert "title" in excinfo.value.message_dict

    def test_it_refuses_an_unknown_origination(self, alice):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.project_create(actor=alice, title="X", pi=alice, origination="MARS")
        assert "origination" in excinfo.value.message_dict

    def test_it_refuses_an_originated_id_already_taken(self, staff, alice, bob):
        services.project_create(
            actor=staff, title="A", pi=alice, origination="ACCESS", originated_id="CIS-1"
        )
        with unchanged(), pytest.raises(ValidationError, match="already exists"):
            services.project_create(
                actor=staff, title="B", pi=bob, origination="ACCESS", originated_id="CIS-1"
            )


@pytest.fixture
def eve(org):
    """An admin of another cluster, which hosts nothing of alice's."""
    eve = make_user("eve", org)
    Cluster.objects.create(name="cpu2").admins.add(eve)
    return eve


def _allocation_rows(project):
    return (
        list(Allocation.objects.filter(project=project).order_by("pk").values()),
        list(Membership.objects.filter(allocation__project=project).order_by("pk").values()),
        AllocationChange.objects.filter(allocation__project=project).count(),
    )


class TestProjectSetStatus:
    def test_it_lets_an_admin_of_a_hosting_cluster_freeze_the_project(self, allocation, dana):
        project = allocation.project

        services.project_set_status(
            actor=dana, project=project, status="INACTIVE", reason="Unpaid invoice"
        )

        project.refresh_from_db()
        assert project.status == "INACTIVE"
        change = project.changes.last()
        assert (change.kind, change.status, change.actor, change.reason) == (
            "STATUS",
            "INACTIVE",
            dana,
            "Unpaid invoice",
        )

    def test_freezing_leaves_its_allocations_alone_and_unfreezing_restores_them(
        self, allocation, dana
    ):
        project = allocation.project
        before = _allocation_rows(project)

        services.project_set_status(actor=dana, project=project, status="INACTIVE", reason="Hold")
        assert _allocation_rows(project) == before
        services.project_set_status(actor=dana, project=project, status="ACTIVE", reason="Paid")

        assert _allocation_rows(project) == before
        assert list(project.changes.values_list("kind", "status")) == [
            ("CREATED", "ACTIVE"),
            ("STATUS", "INACTIVE"),
            ("STATUS", "ACTIVE"),
        ]

    def test_it_lets_staff_change_the_status(self, project, staff):
        services.project_set_status(actor=staff, project=project, status="DELETED", reason="Gone")

        project.refresh_from_db()
        assert project.status == "DELETED"

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie", "eve"])
    def test_it_refuses_anyone_but_staff_and_admins_of_its_clusters(
        self, request, allocation, eve, who
    ):
        actor = request.getfixturevalue(who)
        with unchanged(), pytest.raises(PermissionDenied):
            services.project_set_status(
                actor=actor, project=allocation.project, status="INACTIVE", reason="Because"
            )

    def test_it_requires_a_reason(self, allocation, dana):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.project_set_status(
                actor=dana, project=allocation.project, status="INACTIVE", reason="  "
            )
        assert "reason" in excinfo.value.message_dict

    def test_it_refuses_an_unknown_status(self, allocation, dana):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.project_set_status(
                actor=dana, project=allocation.project, status="FROZEN", reason="Hold"
            )
        assert "status" in excinfo.value.message_dict

    def test_it_refuses_the_status_the_project_already_has(self, allocation, dana):
        with unchanged(), pytest.raises(ValidationError, match="already ACTIVE"):
            services.project_set_status(
                actor=dana, project=allocation.project, status="ACTIVE", reason="Again"
            )


class TestProjectManagers:
    def test_the_pi_names_a_manager_who_then_may_request_allocations(
        self, project, alice, bob, cluster, gpu
    ):
        services.project_add_manager(actor=alice, project=project, user=bob)

        change = project.changes.last()
        assert (change.kind, change.subject, change.actor) == ("MANAGER_ADDED", bob, alice)
        assert user_manages_project(user=bob, project=project)
        request = services.allocation_request_create(
            actor=bob,
            project=project,
            cluster=cluster,
            name="bobs",
            resources=[gpu],
            su_amount="10",
            start=START,
            end=END,
            justification="Co-PI work",
        )
        assert request.requester == bob

    @pytest.mark.parametrize("who", ["bob", "charlie", "dana"])
    def test_it_refuses_anyone_but_the_pi_naming_managers(
        self, request, project, alice, bob, charlie, who
    ):
        # bob is a manager here: co-PIs share the PI's rights, not the right to name co-PIs.
        services.project_add_manager(actor=alice, project=project, user=bob)
        actor = request.getfixturevalue(who)
        with unchanged(), pytest.raises(PermissionDenied):
            services.project_add_manager(actor=actor, project=project, user=charlie)

    def test_it_refuses_naming_the_pi_or_a_manager_again(self, project, alice, bob):
        services.project_add_manager(actor=alice, project=project, user=bob)
        for user in (alice, bob):
            with unchanged(), pytest.raises(ValidationError, match="already manages"):
                services.project_add_manager(actor=alice, project=project, user=user)

    def test_the_pi_removes_a_manager(self, project, alice, bob):
        services.project_add_manager(actor=alice, project=project, user=bob)

        services.project_remove_manager(actor=alice, project=project, user=bob)

        assert not user_manages_project(user=bob, project=project)
        change = ProjectChange.objects.filter(project=project).last()
        assert (change.kind, change.subject, change.actor) == ("MANAGER_REMOVED", bob, alice)

    def test_it_refuses_removing_someone_who_is_not_a_manager(self, project, alice, charlie):
        with unchanged(), pytest.raises(ValidationError, match="not a manager"):
            services.project_remove_manager(actor=alice, project=project, user=charlie)

    def test_it_refuses_a_manager_removing_another(self, project, alice, bob, charlie):
        services.project_add_manager(actor=alice, project=project, user=bob)
        services.project_add_manager(actor=alice, project=project, user=charlie)
        with unchanged(), pytest.raises(PermissionDenied):
            services.project_remove_manager(actor=bob, project=project, user=charlie)
