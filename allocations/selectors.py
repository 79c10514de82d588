"""Reads: who may see or act on what, and the querysets pages and the API share."""

from django.db.models import Q, QuerySet

from accounts.models import User
from allocations.models import Allocation, ChangeRequest, Cluster, Membership, Project, Status

# A frozen (INACTIVE) member still sees the allocation and why they cannot charge it; a
# removed (DELETED) one no longer does.
_VISIBLE_MEMBERSHIP = [Status.ACTIVE, Status.INACTIVE]


def user_manages_project(*, user: User, project: Project) -> bool:
    """PI, a named manager (co-PI), or a site admin (superuser).

    Django's is_staff only opens the admin site: a cluster admin needs it to use the
    admin, so it grants no rights on projects or clusters by itself."""
    if not user.is_authenticated:
        return False
    if user.is_superuser or project.pi_id == user.pk:
        return True
    return project.managers.filter(pk=user.pk).exists()


def user_administers_cluster(*, user: User, cluster: Cluster) -> bool:
    if not user.is_authenticated:
        return False
    if user.is_superuser:
        return True
    return cluster.admins.filter(pk=user.pk).exists()


def user_administers_any_cluster(*, user: User) -> bool:
    return user.is_authenticated and Cluster.objects.filter(admins=user).exists()


def project_list_for(*, user: User) -> QuerySet[Project]:
    """Projects the user leads, manages, or holds a membership in."""
    qs = Project.objects.select_related("pi")
    if user.is_superuser:
        return qs
    return qs.filter(
        Q(pi=user)
        | Q(managers=user)
        # One Q, so both conditions apply to the same membership row.
        | Q(
            allocations__memberships__user=user,
            allocations__memberships__status__in=_VISIBLE_MEMBERSHIP,
        )
    ).distinct()


def allocation_list_for(*, user: User) -> QuerySet[Allocation]:
    qs = Allocation.objects.select_related("project", "project__pi", "cluster")
    if user.is_superuser:
        return qs
    return qs.filter(
        Q(project__pi=user)
        | Q(project__managers=user)
        | Q(memberships__user=user, memberships__status__in=_VISIBLE_MEMBERSHIP)
        | Q(cluster__admins=user)
    ).distinct()


def pending_requests_for_admin(*, user: User) -> QuerySet[ChangeRequest]:
    """The admin queue: pending requests on the user's clusters, by priority then age."""
    qs = ChangeRequest.objects.filter(state=ChangeRequest.State.PENDING).select_related(
        "allocation", "allocation__project", "allocation__cluster", "requester"
    )
    if not user.is_superuser:
        qs = qs.filter(allocation__cluster__admins=user)
    return qs.order_by("-priority", "created")


def membership_for(*, allocation: Allocation, user: User) -> Membership | None:
    return Membership.objects.filter(allocation=allocation, user=user).first()


def allocation_list_for_cluster(*, cluster: Cluster) -> QuerySet[Allocation]:
    """What an importer token of the cluster may see."""
    return Allocation.objects.select_related("project", "project__pi", "cluster").filter(
        cluster=cluster
    )
