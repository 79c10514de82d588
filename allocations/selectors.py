"""Reads: who may see or act on what, and the querysets pages and the API share."""

import datetime as dt
from decimal import Decimal

from django.db.models import Q, QuerySet, Sum
from django.db.models.functions import TruncMonth

from accounts.models import User
from allocations.models import (
    Allocation,
    AllocationChange,
    ChangeRequest,
    Cluster,
    Membership,
    Project,
    Status,
    UsageDaily,
)

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


# --- analytics: chart data, read from the daily rollups, never from the usage table -----


def usage_by_day(*, allocation: Allocation, start: dt.date, end: dt.date) -> list[tuple]:
    """(day, SUs) of an allocation; one grouped query on the rollups."""
    return list(
        UsageDaily.objects.filter(allocation=allocation, day__gte=start, day__lte=end)
        .values("day")
        .annotate(total=Sum("su"))
        .order_by("day")
        .values_list("day", "total")
    )


def usage_by_member_day(
    *, allocation: Allocation, start: dt.date, end: dt.date, viewer: User | None = None
) -> list[tuple]:
    """(member, day, SUs). With a viewer who is a plain member, everyone else is one
    "Other members" series: members see their own usage, not each colleague's."""
    rows = (
        UsageDaily.objects.filter(allocation=allocation, day__gte=start, day__lte=end)
        .values("user__username", "day")
        .annotate(total=Sum("su"))
        .order_by("day", "user__username")
        .values_list("user__username", "day", "total")
    )
    if viewer is None:
        return list(rows)
    from allocations.charts import OTHERS

    return [(name if name == viewer.username else OTHERS, day, su) for name, day, su in rows]


def usage_by_resource_day(*, allocation: Allocation, start: dt.date, end: dt.date) -> list[tuple]:
    return list(
        UsageDaily.objects.filter(allocation=allocation, day__gte=start, day__lte=end)
        .values("resource__name", "day")
        .annotate(total=Sum("su"))
        .order_by("day", "resource__name")
        .values_list("resource__name", "day", "total")
    )


def budget_steps(*, allocation: Allocation) -> list[tuple]:
    """(day, budget after that day's diffs), in time order: one query on the diffs."""
    return [
        (created.astimezone(dt.UTC).date(), budget)
        for created, budget in AllocationChange.objects.filter(allocation=allocation)
        .order_by("created", "id")
        .values_list("created", "su_budget")
    ]


def cluster_usage_by_project_month(*, cluster: Cluster, start: dt.date, end: dt.date) -> list:
    """(project, month, SUs) of a cluster's allocations."""
    return list(
        UsageDaily.objects.filter(allocation__cluster=cluster, day__gte=start, day__lte=end)
        .annotate(month=TruncMonth("day"))
        .values("allocation__project__title", "month")
        .annotate(total=Sum("su"))
        .order_by("month", "allocation__project__title")
        .values_list("allocation__project__title", "month", "total")
    )


def cluster_commitments(*, cluster: Cluster, start: dt.date, end: dt.date) -> list[tuple]:
    """(start, end, budget) of the cluster's allocations that commit SUs in the range:
    active ones, and inactive ones that have a budget (frozen, or ended)."""
    return list(
        Allocation.objects.filter(cluster=cluster, start__lte=end, end__gte=start)
        .exclude(status=Status.DELETED)
        .filter(su_budget__gt=0)
        .values_list("start", "end", "su_budget")
    )


def decision_times(*, cluster: Cluster, start: dt.date, end: dt.date) -> list[tuple]:
    """(outcome, days from request to decision) of the cluster's requests decided by an
    admin in the range (cancellations are the requester's, not a decision)."""
    rows = ChangeRequest.objects.filter(
        allocation__cluster=cluster,
        state__in=[ChangeRequest.State.APPROVED, ChangeRequest.State.REJECTED],
        decided_at__date__gte=start,
        decided_at__date__lte=end,
    ).values_list("state", "created", "decided_at")
    return [
        (state.lower(), Decimal((decided - created).total_seconds()) / 86400)
        for state, created, decided in rows
    ]
