"""Reads: who may see or act on what, and the querysets pages and the API share."""

import datetime as dt
from decimal import Decimal

from django.db.models import (
    Count,
    Exists,
    F,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce, TruncDate

from accounts.models import User
from allocations.models import (
    Allocation,
    ChangeRequest,
    ChangeRequestEvent,
    Cluster,
    Membership,
    Project,
    Status,
    Usage,
    UsageAdjustment,
    su_field,
)

SU = su_field()

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


# --- the browser portal ---------------------------------------------------------------


def portal_allocation_list(*, user: User) -> QuerySet[Allocation]:
    """The dashboard: allocations of projects the user leads or manages, and those they
    are a member of, with the user's own membership and whether a request is pending.

    Unlike allocation_list_for, a cluster admin's clusters are not listed here (the review
    queue is their view of them), nor is every allocation for a superuser."""
    mine = Membership.objects.filter(allocation=OuterRef("pk"), user=user)
    return (
        Allocation.objects.select_related("project", "project__pi", "cluster")
        .filter(
            Q(project__pi=user)
            | Q(project__managers=user)
            | Q(memberships__user=user, memberships__status__in=_VISIBLE_MEMBERSHIP)
        )
        .exclude(status=Status.DELETED)
        .annotate(
            has_pending=Exists(
                ChangeRequest.objects.filter(
                    allocation=OuterRef("pk"), state=ChangeRequest.State.PENDING
                )
            ),
            my_status=Subquery(mine.values("status")[:1]),
            my_su_used=Subquery(mine.values("su_used")[:1]),
            my_su_cap=Subquery(mine.values("su_cap")[:1]),
            i_manage=Q(project__pi=user)
            | Exists(
                Project.managers.through.objects.filter(
                    project_id=OuterRef("project_id"), user_id=user.pk
                )
            ),
        )
        .distinct()
        .order_by("project__title", "cluster__name", "name")
    )


def projects_managed_by(*, user: User) -> QuerySet[Project]:
    qs = Project.objects.select_related("pi").order_by("title")
    if user.is_superuser:
        return qs
    return qs.filter(Q(pi=user) | Q(managers=user)).distinct()


def _net_usage(allocation: Allocation, user: User | None):
    """Usage rows and adjustment rows of an allocation (or of one member of it)."""
    usage = Usage.objects.filter(allocation=allocation)
    adjustments = UsageAdjustment.objects.filter(allocation=allocation)
    if user is not None:
        usage = usage.filter(user=user)
        adjustments = adjustments.filter(user=user)
    return usage, adjustments


def usage_by_resource(*, allocation: Allocation, user: User | None = None) -> list[dict]:
    """[{resource, su}] with adjustments counted against the resource of the job they adjust."""
    usage, adjustments = _net_usage(allocation, user)
    totals: dict[str, Decimal] = {}
    for row in usage.values("resource__name").annotate(su=Sum("su_amount")).order_by():
        totals[row["resource__name"]] = row["su"]
    for row in adjustments.values("usage__resource__name").annotate(su=Sum("su_delta")).order_by():
        name = row["usage__resource__name"]
        totals[name] = totals.get(name, Decimal(0)) + row["su"]
    return [{"resource": name, "su": su} for name, su in sorted(totals.items())]


def usage_by_day(
    *, allocation: Allocation, user: User | None = None
) -> list[tuple[dt.date, Decimal]]:
    """SUs charged per UTC day (adjustments on the day they were made); served by the
    (allocation, charged_at) and (allocation, user, charged_at) indexes."""
    usage, adjustments = _net_usage(allocation, user)
    rows = [
        (row["day"], row["su"])
        for row in usage.annotate(day=TruncDate("charged_at"))
        .values("day")
        .annotate(su=Sum("su_amount"))
        .order_by()
    ]
    rows += [
        (row["day"], row["su"])
        for row in adjustments.annotate(day=TruncDate("created"))
        .values("day")
        .annotate(su=Sum("su_delta"))
        .order_by()
    ]
    return rows


def budget_steps(*, allocation: Allocation) -> list[tuple[dt.date, Decimal]]:
    """(day, budget after that day's last diff): the budget line of the burn-down chart."""
    steps: dict[dt.date, Decimal] = {}
    for created, budget in allocation.changes.order_by("created", "id").values_list(
        "created", "su_budget"
    ):
        steps[created.date()] = budget
    return sorted(steps.items())


def jobs_for(*, allocation: Allocation, user: User | None = None) -> QuerySet[Usage]:
    """An allocation's usage rows, newest first, each with its net charge (su_net)."""
    adjusted = (
        UsageAdjustment.objects.filter(usage=OuterRef("pk"))
        .values("usage")
        .annotate(total=Sum("su_delta"))
        .values("total")
    )
    qs = Usage.objects.filter(allocation=allocation).select_related("user", "resource")
    if user is not None:
        qs = qs.filter(user=user)
    return qs.annotate(
        su_net=F("su_amount") + Coalesce(Subquery(adjusted), Value(Decimal(0)), output_field=SU)
    ).order_by("-charged_at", "-id")


def requests_for_allocation(*, allocation: Allocation) -> QuerySet[ChangeRequest]:
    return (
        allocation.change_requests.select_related("requester", "decided_by")
        .prefetch_related(
            Prefetch(
                "events",
                queryset=ChangeRequestEvent.objects.select_related("actor").order_by(
                    "created", "id"
                ),
            )
        )
        .order_by("-created", "-id")
    )


def memberships_for_allocation(*, allocation: Allocation) -> QuerySet[Membership]:
    return allocation.memberships.select_related("user").order_by("status", "user__username")


def cap_summary(*, allocation: Allocation) -> dict:
    """Caps of the members who may still charge, against the budget: the pool no cap
    claims, and whether caps add up to more than the budget (allowed, but worth a warning)."""
    row = allocation.memberships.exclude(status=Status.DELETED).aggregate(
        capped=Sum("su_cap"), uncapped=Count("pk", filter=Q(su_cap__isnull=True))
    )
    capped = row["capped"] or Decimal(0)
    return {
        "capped": capped,
        "uncapped_members": row["uncapped"],
        "unclaimed": allocation.su_budget - capped,
        "overcommitted": capped > allocation.su_budget,
    }
