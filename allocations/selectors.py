"""Reads: who may see or act on what, and the querysets pages and the API share."""

import csv
import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import ApiToken, User
from allocations.models import (
    Allocation,
    ChangeRequest,
    Cluster,
    Membership,
    Project,
    Rate,
    Status,
    SyncReport,
    TresMapping,
    UsageImport,
)

if TYPE_CHECKING:
    from allocations.slurm import DesiredState

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


def usage_import_list_for(*, user: User, token: ApiToken | None = None) -> QuerySet[UsageImport]:
    """Imports an importer token (its cluster's), a cluster admin (their clusters') or a
    superuser (all) may see."""
    qs = UsageImport.objects.select_related("cluster", "created_by", "token")
    if token is not None:
        return qs.filter(cluster_id=token.cluster_id)
    if user.is_superuser:
        return qs
    if not user.is_authenticated:
        return qs.none()
    return qs.filter(cluster__admins=user)


@dataclass(frozen=True)
class ImportProgress:
    percent: int
    rows_done: int
    rows_total: int
    rows_per_second: Decimal | None
    eta_seconds: int | None


def usage_import_progress(usage_import: UsageImport, *, now: dt.datetime | None = None):
    """How far an import is. Rows are parser items (a sacct or SWF line, a slurmrestd job);
    the speed is this run's, from its start to its last heartbeat, and the ETA is the
    rows left at that speed, counted from the last heartbeat."""
    done, total = usage_import.checkpoint, usage_import.rows_total
    finished = usage_import.state == UsageImport.State.DONE
    if finished:
        percent = 100
    elif total:
        # Never 100 before the end: the last batch and the final bookkeeping are still due.
        percent = min(99, done * 100 // total)
    else:
        percent = min(99, usage_import.bytes_read * 100 // max(usage_import.size, 1))
    speed = eta = None
    running = usage_import.state == UsageImport.State.RUNNING
    if running and usage_import.started_at and usage_import.heartbeat_at:
        seconds = (usage_import.heartbeat_at - usage_import.started_at).total_seconds()
        rows = done - usage_import.resumed_from
        if seconds > 0 and rows > 0:
            speed = (Decimal(rows) / Decimal(seconds)).quantize(Decimal("0.1"))
            since = ((now or timezone.now()) - usage_import.heartbeat_at).total_seconds()
            eta = max(0, math.ceil(max(total - done, 0) * seconds / rows - since))
    return ImportProgress(percent, done, total, speed, eta)


class _Echo:
    def write(self, value: str) -> str:
        return value


def usage_import_rejects_csv(usage_import: UsageImport) -> Iterator[str]:
    """The import's rejects as CSV rows (line,job_id,field,reason), streamed."""
    writer = csv.writer(_Echo())
    yield writer.writerow(("line", "job_id", "field", "reason"))
    rows = usage_import.rejects.order_by("id").values_list("line", "job_id", "field", "reason")
    for line, job_id, field, reason in rows.iterator():
        yield writer.writerow(("" if line is None else line, job_id, field, reason))


def desired_state_for(*, cluster: Cluster, at: dt.datetime | None = None) -> "DesiredState":
    """What Slurm should enforce on the cluster (allocations/slurm.py), in four queries
    whatever its size: the allocations with their projects, every membership of them with
    its user, the cluster's TRES mappings and the rates in force."""
    # Imported here: slurm.py needs admission.py, which needs this module.
    from allocations.slurm import desired_state

    at = at or timezone.now()
    allocations = list(
        Allocation.objects.filter(cluster=cluster).select_related("project").order_by("name")
    )
    memberships: dict[int, list[Membership]] = defaultdict(list)
    for membership in (
        Membership.objects.filter(allocation__cluster=cluster)
        .select_related("user")
        .order_by("user__username")
    ):
        memberships[membership.allocation_id].append(membership)
    mappings = TresMapping.objects.filter(cluster=cluster).select_related("resource")
    rates = {
        rate.resource_id: rate
        for rate in Rate.objects.filter(resource__cluster=cluster, start__lte=at).filter(
            Q(end__isnull=True) | Q(end__gt=at)
        )
    }
    return desired_state(
        cluster,
        allocations,
        memberships,
        mappings=list(mappings.order_by("partition", "tres")),
        rates=rates,
        at=at,
    )


def sync_report_list_for_cluster(*, cluster: Cluster) -> QuerySet[SyncReport]:
    return SyncReport.objects.filter(cluster=cluster).select_related("cluster", "token")
