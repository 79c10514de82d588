"""Reads: who may see or act on what, and the querysets pages and the API share."""

import csv
import datetime as dt
import functools
import math
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from django.core.paginator import Page
from django.db import connection
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
from django.db.models.functions import Coalesce, TruncMonth
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import ApiToken, User
from allocations.conversion import SU_QUANTUM
from allocations.forecasts import RATE_WINDOW_DAYS, Forecast, forecast, mean_per_day, rate_window
from allocations.models import (
    Allocation,
    AllocationChange,
    ChangeRequest,
    ChangeRequestEvent,
    Cluster,
    Membership,
    Project,
    Rate,
    Status,
    SyncReport,
    TresMapping,
    Usage,
    UsageAdjustment,
    UsageDaily,
    UsageImport,
    su_field,
)
from portal.paging import page_of_rows
from portal.rows import columns, fetch, instances, to_date, to_su
from portal.rows import cursor as rows_cursor

if TYPE_CHECKING:
    from allocations.slurm import DesiredState

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
    if not user.is_authenticated:
        return False
    # Memoised on the user object, which lives for one request: the layout's nav and the
    # review pages both ask.
    cached = getattr(user, "_administers_any_cluster", None)
    if cached is None:
        cached = Cluster.objects.filter(admins=user).exists()
        user._administers_any_cluster = cached
    return cached


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


def allocation_for_viewer(*, user: User, code: uuid.UUID) -> Allocation | None:
    """The allocation with this code if allocation_list_for(user) holds it, else None:
    allocation_viewer's one statement, with allocation_list_for's rule applied to its
    answer (tests/allocations/test_allocation_for_viewer.py holds the two to the same).

    It carries viewer_manages (PI, manager or superuser) and viewer_administers (admin
    of its cluster, or superuser), so callers need no further query to know what the
    viewer may see of it."""
    try:
        viewer = allocation_viewer(user=user, code=code)
    except Allocation.DoesNotExist:
        return None
    member = viewer.membership is not None and viewer.membership.status in _VISIBLE_MEMBERSHIP
    if not (viewer.manages or viewer.administers or member):
        return None
    allocation = viewer.allocation
    allocation.viewer_manages, allocation.viewer_administers = viewer.manages, viewer.administers
    return allocation


# project_list_for's rule for one project, as allocation_for_viewer does it for an
# allocation (tests/allocations/test_allocation_for_viewer.py holds it to that rule).
_PROJECT_FOR_VIEWER_SQL = """
SELECT p.*,
    (p.pi_id = %(user)s OR EXISTS (
        SELECT 1 FROM allocations_project_managers m
        WHERE m.project_id = p.id AND m.user_id = %(user)s)) AS viewer_manages,
    EXISTS (
        SELECT 1 FROM allocations_membership ms
        JOIN allocations_allocation a ON a.id = ms.allocation_id
        WHERE a.project_id = p.id AND ms.user_id = %(user)s
            AND ms.status IN (%(active)s, %(inactive)s)) AS viewer_member
FROM allocations_project p
WHERE p.code = %(code)s
"""


def project_for_viewer(*, user: User, code: uuid.UUID) -> Project | None:
    """The project with this code if project_list_for(user) holds it, else None; with
    viewer_manages (PI, manager or superuser)."""
    if user.is_superuser:
        project = Project.objects.filter(code=code).order_by().first()
        if project is not None:
            project.viewer_manages = True
        return project
    params = {
        "user": user.pk,
        "code": Project._meta.get_field("code").get_db_prep_value(code, connection),
        "active": str(_VISIBLE_MEMBERSHIP[0]),
        "inactive": str(_VISIBLE_MEMBERSHIP[1]),
    }
    for project in Project.objects.raw(_PROJECT_FOR_VIEWER_SQL, params):
        project.viewer_manages = bool(project.viewer_manages)
        if project.viewer_manages or project.viewer_member:
            return project
    return None


def project_allocations_for(*, user: User, project: Project) -> QuerySet[Allocation]:
    """The project's allocations that allocation_list_for(user) holds. The project's
    PI and managers (project_for_viewer's viewer_manages) see them all, without the
    joins and DISTINCT of the general rule."""
    if getattr(project, "viewer_manages", False):
        return Allocation.objects.filter(project=project).select_related("cluster")
    return allocation_list_for(user=user).filter(project=project)


def pending_requests_for_admin(*, user: User) -> QuerySet[ChangeRequest]:
    """The admin queue: pending requests on the user's clusters, by priority then age."""
    qs = ChangeRequest.objects.filter(state=ChangeRequest.State.PENDING).select_related(
        "allocation", "allocation__project", "allocation__cluster", "requester"
    )
    if not user.is_superuser:
        # EXISTS rather than a join to the admins: PostgreSQL's planning time grows fast
        # with the number of joins, and here it cost more than running the query.
        qs = qs.filter(
            Exists(
                Cluster.admins.through.objects.filter(
                    cluster_id=OuterRef("allocation__cluster_id"), user_id=user.pk
                )
            )
        )
    return qs.order_by("-priority", "created")


@dataclass(frozen=True)
class Viewer:
    """What one user may see and do on one allocation (views.Access builds on it)."""

    allocation: Allocation
    manages: bool  # the project's PI, a named manager or a superuser
    administers: bool  # an admin of the allocation's cluster or a superuser
    membership: Membership | None


_VIEWER_MODELS = (Allocation, Project, User, Cluster, Membership)


@functools.cache
def _allocation_viewer_sql(vendor: str) -> str:
    """allocation_viewer's statement, built once from the models' columns."""
    selected = ", ".join(
        columns(model, alias)
        for model, alias in zip(_VIEWER_MODELS, ("a", "p", "pi", "c", "m"), strict=True)
    )
    return f"""
        SELECT {selected},
            p.pi_id = %(user)s OR EXISTS (
                SELECT 1 FROM allocations_project_managers pm
                WHERE pm.project_id = a.project_id AND pm.user_id = %(user)s),
            EXISTS (
                SELECT 1 FROM allocations_cluster_admins ca
                WHERE ca.cluster_id = a.cluster_id AND ca.user_id = %(user)s),
            EXISTS (
                SELECT 1 FROM allocations_changerequest r
                WHERE r.allocation_id = a.id AND r.state = %(pending)s)
        FROM allocations_allocation a
        JOIN allocations_project p ON p.id = a.project_id
        JOIN accounts_user pi ON pi.id = p.pi_id
        JOIN allocations_cluster c ON c.id = a.cluster_id
        LEFT JOIN allocations_membership m ON m.allocation_id = a.id AND m.user_id = %(user)s
        WHERE a.code = %(code)s
    """  # noqa: S608 (table and column names from the models; values are parameters)


def allocation_viewer(*, user: User, code) -> Viewer:
    """The allocation (with its project, PI and cluster) and the user's rights on it and
    membership, in one plain statement (portal/rows.py says why): the rights of
    user_manages_project and user_administers_cluster as EXISTS subqueries. The
    allocation carries has_pending: whether a request awaits a decision. Raises
    Allocation.DoesNotExist."""
    params = {
        "user": user.pk,
        "code": Allocation._meta.get_field("code").get_db_prep_value(code, connection),
        "pending": str(ChangeRequest.State.PENDING),
    }
    with rows_cursor() as cursor:
        cursor.execute(_allocation_viewer_sql(connection.vendor), params)
        row = cursor.fetchone()
    if row is None:
        raise Allocation.DoesNotExist
    (allocation, project, pi, cluster, membership), (manages, administers, pending) = instances(
        row, _VIEWER_MODELS
    )
    project.pi = pi
    allocation.project, allocation.cluster = project, cluster
    allocation.has_pending = bool(pending)
    if membership is not None:
        membership.allocation, membership.user = allocation, user
    superuser = user.is_superuser
    return Viewer(
        allocation=allocation,
        manages=superuser or bool(manages),
        administers=superuser or bool(administers),
        membership=membership,
    )


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


# --- the browser portal ---------------------------------------------------------------


# The dashboard's page of allocations in one statement (portal/rows.py says why not a
# queryset): those of projects the user leads or manages and those they are a member of,
# with the user's own membership (at most one row, so no DISTINCT) and whether a request
# is pending. The PI's and cluster's names are scalar subqueries, not joins: PostgreSQL
# took longer to plan each join than to run the whole statement. Unlike
# allocation_list_for, a cluster admin's clusters are not listed here (the review queue
# is their view of them), nor is every allocation for a superuser.
_DASHBOARD_SQL = """
SELECT a.code, a.name, a.status, a."end", a.su_budget, a.su_used, a.su_held,
    p.code AS project_code, p.title AS project_title, p.status AS project_status,
    (SELECT COALESCE(NULLIF(TRIM(u.first_name || ' ' || u.last_name), ''), u.username)
     FROM accounts_user u WHERE u.id = p.pi_id) AS pi_name,
    (SELECT c.name FROM allocations_cluster c WHERE c.id = a.cluster_id) AS cluster_name,
    (p.pi_id = %(user)s OR EXISTS (
        SELECT 1 FROM allocations_project_managers m
        WHERE m.project_id = a.project_id AND m.user_id = %(user)s)) AS i_manage,
    mine.status AS my_status, mine.su_used AS my_su_used, mine.su_cap AS my_su_cap,
    EXISTS (
        SELECT 1 FROM allocations_changerequest r
        WHERE r.allocation_id = a.id AND r.state = %(pending)s) AS has_pending,
    COUNT(*) OVER () AS rows_in_list
FROM allocations_allocation a
JOIN allocations_project p ON p.id = a.project_id
LEFT JOIN allocations_membership mine ON mine.allocation_id = a.id AND mine.user_id = %(user)s
WHERE a.status <> %(deleted)s
    AND (p.pi_id = %(user)s
         OR EXISTS (
            SELECT 1 FROM allocations_project_managers m
            WHERE m.project_id = a.project_id AND m.user_id = %(user)s)
         OR mine.status IN (%(active)s, %(inactive)s))
ORDER BY p.title, cluster_name, a.name, a.id
LIMIT %(limit)s OFFSET %(offset)s
"""


def dashboard_allocations(*, user: User, limit: int, offset: int) -> list[dict]:
    """One page of the dashboard's allocations as plain rows (portal.rows.fetch), each
    with rows_in_list, the length of the whole list."""
    return fetch(
        _DASHBOARD_SQL,
        {
            "user": user.pk,
            "pending": str(ChangeRequest.State.PENDING),
            "deleted": str(Status.DELETED),
            "active": str(_VISIBLE_MEMBERSHIP[0]),
            "inactive": str(_VISIBLE_MEMBERSHIP[1]),
            "limit": limit,
            "offset": offset,
        },
        decimals=["su_budget", "su_used", "su_held", "my_su_used", "my_su_cap"],
        bools=["i_manage", "has_pending"],
        dates=["end"],
        uuids=["code", "project_code"],
    )


def projects_managed_by(*, user: User) -> QuerySet[Project]:
    qs = Project.objects.select_related("pi").order_by("title")
    if user.is_superuser:
        return qs
    return qs.filter(
        Q(pi=user)
        | Exists(
            Project.managers.through.objects.filter(project_id=OuterRef("pk"), user_id=user.pk)
        )
    )


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


# --- the review queue (cluster admins) ----------------------------------------------------


def review_clusters(*, user: User, today: dt.date) -> tuple[list[Cluster], dict]:
    """The clusters the user administers (a superuser: all), by name, and from the same
    statement each one's ACTIVE budgets summed by (start, end) that can fall in this
    month or a later one: all the queue's commitments read (review_queue_page), without
    a query of their own. Also answers user_administers_any_cluster for the rest of the
    request (the review queue refuses anyone without one, and the layout's nav asks).
    Plain SQL (see portal/rows.py): the queue reads it on every request, and compiling
    the queryset cost more than running it."""
    where = "" if user.is_superuser else _ADMINISTERS_CLUSTER
    with rows_cursor() as cursor:
        cursor.execute(
            f"""
            SELECT {columns(Cluster, "c")}, b.start, b."end", SUM(b.su_budget)
            FROM allocations_cluster c
            LEFT JOIN allocations_allocation b ON b.cluster_id = c.id
                AND b.status = %(active)s AND b."end" >= %(first)s{where}
            GROUP BY c.id, b.start, b."end"
            ORDER BY c.name, c.id
            """,  # noqa: S608 (the clusters' columns and rule are ours; values are parameters)
            {
                "user": user.pk,
                "active": Status.ACTIVE,
                "first": connection.ops.adapt_datefield_value(today.replace(day=1)),
            },
        )
        rows = cursor.fetchall()
    clusters: dict[int, Cluster] = {}
    budgets: dict[int, list[tuple]] = defaultdict(list)
    for row in rows:
        (cluster,), (start, end, budget) = instances(row, [Cluster])
        clusters.setdefault(cluster.pk, cluster)
        if budget is not None:
            budgets[cluster.pk].append((to_su(budget), to_date(start), to_date(end)))
    if not user.is_superuser:
        user._administers_any_cluster = bool(clusters)
    return list(clusters.values()), budgets


_ADMINISTERS_CLUSTER = """
    WHERE EXISTS (SELECT 1 FROM allocations_cluster_admins ca
        WHERE ca.cluster_id = c.id AND ca.user_id = %(user)s)"""


def review_queue(
    *, user: User, cluster: Cluster | None = None, max_su: Decimal | None = None
) -> QuerySet[ChangeRequest]:
    """Pending requests on the user's clusters (a superuser's: all), by priority then
    age; `max_su` keeps those asking for at most that many SUs (the small ones)."""
    # The PIs in a query of their own: one more join would cost more to plan than that.
    qs = pending_requests_for_admin(user=user).prefetch_related("allocation__project__pi")
    if cluster is not None:
        qs = qs.filter(allocation__cluster=cluster)
    if max_su is not None:
        qs = qs.filter(Q(su_delta__isnull=True) | Q(su_delta__lte=max_su))
    return qs.order_by("-priority", "created", "pk")


# The queue's page in one statement: the pending requests the user may decide on, each
# with its allocation, the net SUs its rollups hold for the burn-rate window, and the
# project's earlier requests by state. Plain SQL: building, compiling and instantiating
# the querysets it replaced cost several times what the database takes to answer it.
# Prepared on PostgreSQL (portal/rows.py), so its joins are planned once a connection.
_REVIEW_QUEUE_SQL = """
WITH page AS (
    SELECT r.id, r.code, r.kind, r.su_delta, r.requested_status, r.requested_end,
        r.priority, r.created, r.requester_id, r.allocation_id,
        a.name, a.status, a.start, a."end", a.su_budget, a.su_used, a.project_id,
        a.cluster_id,
        COUNT(*) OVER () AS rows_in_list
    FROM allocations_changerequest r
    JOIN allocations_allocation a ON a.id = r.allocation_id
    WHERE r.state = %(pending)s{where}
    ORDER BY r.priority DESC, r.created, r.id
    LIMIT %(limit)s OFFSET %(offset)s
),
history AS (
    SELECT h.project_id,
        SUM(CASE WHEN d.state = %(approved)s THEN 1 ELSE 0 END) AS approved,
        SUM(CASE WHEN d.state = %(rejected)s THEN 1 ELSE 0 END) AS rejected,
        SUM(CASE WHEN d.state = %(cancelled)s THEN 1 ELSE 0 END) AS cancelled
    FROM allocations_changerequest d
    JOIN allocations_allocation h ON h.id = d.allocation_id
    WHERE d.state <> %(pending)s AND h.project_id IN (SELECT project_id FROM page)
    GROUP BY h.project_id
)
SELECT p.*, pr.title AS project_title, pi.first_name AS pi_first_name,
    pi.last_name AS pi_last_name, pi.username AS pi_username,
    rq.username AS requester_username,
    (SELECT SUM(d.su) FROM allocations_usagedaily d
        WHERE d.allocation_id = p.allocation_id
        AND d.day >= {window_first} AND d.day <= {window_last}) AS burned,
    COALESCE(hi.approved, 0) AS approved, COALESCE(hi.rejected, 0) AS rejected,
    COALESCE(hi.cancelled, 0) AS cancelled
FROM page p
JOIN allocations_project pr ON pr.id = p.project_id
JOIN accounts_user pi ON pi.id = pr.pi_id
JOIN accounts_user rq ON rq.id = p.requester_id
LEFT JOIN history hi ON hi.project_id = p.project_id
ORDER BY p.priority DESC, p.created, p.id
"""

# The burn-rate window of each row's allocation (forecasts.rate_window) in each
# database's date arithmetic: the last RATE_WINDOW_DAYS up to today or the end date,
# none before the start.
_RATE_WINDOW_SQL = {
    "postgresql": {
        "window_first": 'GREATEST(p.start, LEAST(CAST(%(today)s AS date), p."end") '
        "- CAST(%(window)s AS integer))",
        "window_last": 'LEAST(CAST(%(today)s AS date), p."end")',
    },
    "sqlite": {
        "window_first": 'MAX(p.start, date(MIN(%(today)s, p."end"), '
        "'-' || %(window)s || ' days'))",
        "window_last": 'MIN(%(today)s, p."end")',
    },
}

# review_queue's rule: an admin's own clusters, every cluster for a superuser.
_ADMINISTERED = """
    AND EXISTS (SELECT 1 FROM allocations_cluster_admins ca
        WHERE ca.cluster_id = a.cluster_id AND ca.user_id = %(user)s)"""

# Alphabetical: the order the GROUP BY this replaced answered in on SQLite (PostgreSQL
# gave no particular order).
_DECIDED = sorted(
    state.value for state in ChangeRequest.State if state != ChangeRequest.State.PENDING
)


def review_queue_page(
    *,
    user: User,
    clusters: Iterable[Cluster],
    budgets: dict,
    page: str | None,
    per_page: int,
    now: dt.datetime,
    cluster: Cluster | None = None,
    max_su: Decimal | None = None,
) -> Page:
    """One page of review_queue as dicts: the request, its allocation, cluster, project,
    PI and requester, its burn_rate (the forecast's, from the rollups), its commitment (as
    commitments_for_requests) and its project's history (decided requests by state).
    One query whatever the number of rows: `clusters` and their `budgets` are
    review_clusters(user), which the page lists anyway; they hold every cluster the page
    can show."""
    where = "" if user.is_superuser else _ADMINISTERED
    if cluster is not None:
        where += "\n    AND a.cluster_id = %(cluster)s"
    if max_su is not None:
        where += "\n    AND (r.su_delta IS NULL OR r.su_delta <= %(max_su)s)"
    sql = _REVIEW_QUEUE_SQL.format(where=where, **_RATE_WINDOW_SQL[connection.vendor])
    today = now.date()
    params = {
        "pending": ChangeRequest.State.PENDING,
        "approved": ChangeRequest.State.APPROVED,
        "rejected": ChangeRequest.State.REJECTED,
        "cancelled": ChangeRequest.State.CANCELLED,
        "user": user.pk,
        "cluster": cluster.pk if cluster is not None else None,
        "max_su": max_su,
        "today": connection.ops.adapt_datefield_value(today),
        "window": RATE_WINDOW_DAYS - 1,
    }

    def rows_of(limit: int, offset: int) -> list[dict]:
        return fetch(
            sql,
            {**params, "limit": limit, "offset": offset},
            decimals=["su_delta", "su_budget", "su_used", "burned"],
            dates=["requested_end", "start", "end"],
            datetimes=["created"],
        )

    result = page_of_rows(rows_of, page, per_page)
    rows = result.object_list
    by_id = {c.pk: c for c in clusters}
    for row in rows:
        cluster_of_row = by_id[row["cluster_id"]]
        row["cluster_name"] = cluster_of_row.name
        row["capacity"] = cluster_of_row.su_capacity_per_month
    commitments = _commitments(
        {
            i: _Ask(
                cluster_id=row["cluster_id"],
                capacity=row["capacity"],
                status=row["status"],
                budget=row["su_budget"],
                start=row["start"],
                end=row["end"],
                su_delta=row["su_delta"],
                requested_status=row["requested_status"],
                requested_end=row["requested_end"],
            )
            for i, row in enumerate(rows)
        },
        today,
        budgets,
    )
    for i, row in enumerate(rows):
        code = row["code"]
        row["code"] = code if isinstance(code, uuid.UUID) else uuid.UUID(code)
        first, last = rate_window(start=row["start"], end=row["end"], today=today)
        row["burn_rate"] = mean_per_day(row["burned"] or Decimal(0), (last - first).days + 1)
        row["commitment"] = commitments[i]
        row["history"] = {state: row[state.lower()] for state in _DECIDED if row[state.lower()]}
    return result


def month_bounds(day: dt.date) -> tuple[dt.date, dt.date]:
    first = day.replace(day=1)
    following = (first + dt.timedelta(days=32)).replace(day=1)
    return first, following - dt.timedelta(days=1)


def su_share_in(
    *, budget: Decimal, start: dt.date, end: dt.date, first: dt.date, last: dt.date
) -> Decimal:
    """The part of a budget spread evenly over [start, end] that falls in [first, last]."""
    overlap = (min(end, last) - max(start, first)).days + 1
    if overlap <= 0:
        return Decimal(0)
    return budget * overlap / ((end - start).days + 1)


@dataclass(frozen=True)
class Commitment:
    """A cluster's committed SUs in one month, now and if a request were approved.

    Committed: every ACTIVE allocation's budget spread evenly over its days; a month's
    commitment is the sum of the shares falling in it, compared to su_capacity_per_month."""

    month: dt.date
    capacity: Decimal | None
    committed: Decimal
    if_approved: Decimal

    @staticmethod
    def _percent(amount: Decimal, capacity: Decimal | None) -> Decimal | None:
        if not capacity:
            return None
        return (amount * 100 / capacity).quantize(Decimal("0.1"))

    @property
    def committed_percent(self) -> Decimal | None:
        return self._percent(self.committed, self.capacity)

    @property
    def if_approved_percent(self) -> Decimal | None:
        return self._percent(self.if_approved, self.capacity)

    @property
    def over_capacity(self) -> bool:
        return self.capacity is not None and self.if_approved > self.capacity


@dataclass(frozen=True)
class _Ask:
    """What commitment needs of one request and its allocation."""

    cluster_id: int
    capacity: Decimal | None
    status: str
    budget: Decimal
    start: dt.date
    end: dt.date
    su_delta: Decimal | None
    requested_status: str
    requested_end: dt.date | None


def _active_budgets(
    *, cluster_ids: Iterable[int], first: dt.date, last: dt.date
) -> dict[int, list[tuple]]:
    """Each cluster's ACTIVE budgets overlapping [first, last], summed by (start, end):
    allocations mostly share their dates, and a share is linear in the budget."""
    cluster_ids = sorted(set(cluster_ids))
    marks = ", ".join(["%s"] * len(cluster_ids))
    rows = fetch(
        f"""
        SELECT cluster_id, start, "end", SUM(su_budget) AS budget
        FROM allocations_allocation
        WHERE status = %s AND cluster_id IN ({marks}) AND start <= %s AND "end" >= %s
        GROUP BY cluster_id, start, "end"
        """,  # noqa: S608 (a %s for each cluster; values are parameters)
        [
            Status.ACTIVE,
            *cluster_ids,
            connection.ops.adapt_datefield_value(last),
            connection.ops.adapt_datefield_value(first),
        ],
        decimals=["budget"],
        dates=["start", "end"],
    )
    by_cluster: dict[int, list[tuple]] = defaultdict(list)
    for row in rows:
        by_cluster[row["cluster_id"]].append((row["budget"], row["start"], row["end"]))
    return by_cluster


def _commitments(asks: dict, today: dt.date, budgets: dict | None = None) -> dict:
    """commitments_for_requests for _Asks keyed by anything: one query, none when the
    clusters' `budgets` are given (as review_clusters reads them)."""
    if not asks:
        return {}
    months = {key: month_bounds(max(today, ask.start)) for key, ask in asks.items()}
    if budgets is None:
        budgets = _active_budgets(
            cluster_ids={ask.cluster_id for ask in asks.values()},
            first=min(first for first, _ in months.values()),
            last=max(last for _, last in months.values()),
        )
    # Requests on one cluster mostly ask about the same month: sum its shares once.
    committed_in: dict[tuple[int, dt.date], Decimal] = {}
    out = {}
    for key, ask in asks.items():
        first, last = months[key]
        if (ask.cluster_id, first) not in committed_in:
            committed_in[ask.cluster_id, first] = sum(
                (
                    su_share_in(budget=budget, start=start, end=end, first=first, last=last)
                    for budget, start, end in budgets[ask.cluster_id]
                ),
                Decimal(0),
            )
        committed = committed_in[ask.cluster_id, first]
        after = committed
        if ask.status == Status.ACTIVE:
            after -= su_share_in(
                budget=ask.budget, start=ask.start, end=ask.end, first=first, last=last
            )
        if (ask.requested_status or ask.status) == Status.ACTIVE:
            after += su_share_in(
                budget=ask.budget + (ask.su_delta or 0),
                start=ask.start,
                end=ask.requested_end or ask.end,
                first=first,
                last=last,
            )
        out[key] = Commitment(
            month=first,
            capacity=ask.capacity,
            committed=committed.quantize(Decimal("0.0001")),
            if_approved=after.quantize(Decimal("0.0001")),
        )
    return out


def commitments_for_requests(
    *, requests: Iterable[ChangeRequest], today: dt.date
) -> dict[int, Commitment]:
    """For each request: its cluster's commitment in the month that matters (this month,
    or the allocation's first month if it starts later), now and if approved as asked.
    One query for any number of requests."""
    asks = {}
    for request in requests:
        allocation = request.allocation
        asks[request.pk] = _Ask(
            cluster_id=allocation.cluster_id,
            capacity=allocation.cluster.su_capacity_per_month,
            status=allocation.status,
            budget=allocation.su_budget,
            start=allocation.start,
            end=allocation.end,
            su_delta=request.su_delta,
            requested_status=request.requested_status,
            requested_end=request.requested_end,
        )
    return _commitments(asks, today)


def cluster_commitment_by_month(
    *, cluster: Cluster, first_month: dt.date, months: int = 12
) -> list[Commitment]:
    """The cluster's commitment in each of `months` months from first_month (one query)."""
    bounds = []
    day = first_month.replace(day=1)
    for _ in range(months):
        bounds.append(month_bounds(day))
        day = bounds[-1][1] + dt.timedelta(days=1)
    active = list(
        Allocation.objects.filter(
            cluster=cluster,
            status=Status.ACTIVE,
            start__lte=bounds[-1][1],
            end__gte=bounds[0][0],
        ).values_list("su_budget", "start", "end")
    )
    out = []
    for first, last in bounds:
        committed = sum(
            (
                su_share_in(budget=budget, start=start, end=end, first=first, last=last)
                for budget, start, end in active
            ),
            Decimal(0),
        ).quantize(Decimal("0.0001"))
        out.append(
            Commitment(
                month=first,
                capacity=cluster.su_capacity_per_month,
                committed=committed,
                if_approved=committed,
            )
        )
    return out


def project_decided_requests(*, project: Project) -> QuerySet[ChangeRequest]:
    """A project's earlier requests, newest first, for the review page's history."""
    return (
        ChangeRequest.objects.filter(allocation__project=project)
        .exclude(state=ChangeRequest.State.PENDING)
        .select_related("allocation__cluster", "requester", "decided_by")
        .order_by("-created", "-pk")
    )


def allocations_on_cluster(
    *, cluster: Cluster, status: str = "", search: str = ""
) -> QuerySet[Allocation]:
    qs = Allocation.objects.filter(cluster=cluster).select_related("project__pi", "cluster")
    if status:
        qs = qs.filter(status=status)
    if search:
        qs = qs.filter(
            Q(name__icontains=search)
            | Q(project__title__icontains=search)
            | Q(project__pi__username__icontains=search)
        )
    return qs.order_by("name")


def rates_on_cluster(*, cluster: Cluster) -> QuerySet[Rate]:
    return (
        Rate.objects.filter(resource__cluster=cluster)
        .select_related("resource", "created_by")
        .order_by("resource__name", "-start")
    )


# --- analytics: chart data, read from the daily rollups, never from the usage table -----


# The allocation chart reads below are SQL of their own: built through the ORM, each
# cost twice what PostgreSQL takes to answer it (query building, and a converter call
# per value on rows that are already dates and Decimals), and the chart endpoints run
# one or two on every request. Each sums in the database at the resolution the chart
# draws, so a chart reads one row per day, week or month and member or resource.
_PERIOD_SQL = {
    # A date is truncated as a plain timestamp: as a timestamptz, which the bare date
    # would become, every row goes through the session's time zone.
    "postgresql": {
        "week": "DATE_TRUNC('week', day::timestamp)::date",
        "month": "DATE_TRUNC('month', day::timestamp)::date",
    },
    # Forward to the week's Sunday (or stay on it), then back to its Monday.
    "sqlite": {"week": "date(day, 'weekday 0', '-6 days')", "month": "date(day, 'start of month')"},
}

_USAGE_BY_DAY_SQL = """
SELECT day, SUM(su) FROM allocations_usagedaily
WHERE allocation_id = %s AND day >= %s AND day <= %s
GROUP BY day ORDER BY day
"""

# Named after grouping: joining the users first would read the whole user table (and
# group by name) to name the handful who used the allocation.
_USAGE_BY_MEMBER_SQL = """
SELECT (SELECT username FROM accounts_user WHERE id = g.user_id), g.period, g.su FROM (
    SELECT user_id, {period} AS period, SUM(su) AS su FROM allocations_usagedaily
    WHERE allocation_id = %s AND day >= %s AND day <= %s
    GROUP BY 1, 2
) g
"""

_USAGE_BY_RESOURCE_SQL = """
SELECT (SELECT name FROM allocations_resource WHERE id = g.resource_id), g.period, g.su FROM (
    SELECT resource_id, {period} AS period, SUM(su) AS su FROM allocations_usagedaily
    WHERE allocation_id = %s AND day >= %s AND day <= %s
    GROUP BY 1, 2
) g
"""


def _period_sql(bucket: str) -> str:
    """The first day of the day, week (a Monday) or month holding `day`: the periods
    charts.bucket_start draws."""
    if bucket == "day":
        return "day"
    return _PERIOD_SQL[connection.vendor][bucket]


def _usage_rows(sql: str, allocation: Allocation, start: dt.date, end: dt.date) -> list[tuple]:
    """Rows ending in (day, SUs) as dates and Decimals on any database."""
    with rows_cursor() as cursor:
        cursor.execute(sql, [allocation.pk, start, end])
        rows = cursor.fetchall()
    if connection.vendor == "postgresql":
        return rows
    # SQLite sums decimals as floats (rounded back to the SU column's places, as Django
    # does) and gives computed dates as text.
    return [
        (
            *head,
            dt.date.fromisoformat(day) if isinstance(day, str) else day,
            Decimal(su).quantize(SU_QUANTUM),
        )
        for *head, day, su in rows
    ]


def rollup_usage_by_day(*, allocation: Allocation, start: dt.date, end: dt.date) -> list[tuple]:
    """(day, SUs) of an allocation, in day order; one grouped query on the rollups."""
    return _usage_rows(_USAGE_BY_DAY_SQL, allocation, start, end)


# The allocation page's figures in one statement, four kinds of row told apart by
# "part" (portal/rows.py says why not four querysets): the resources the allocation
# offers, SUs by resource (of one member when %(member)s is set), SUs a day over the
# forecast's window, and the ten members who used most (only when %(members)s is 1).
# All but the last read the daily rollups, so the cost does not grow with usage. The
# first row kind's NULLs are cast: PostgreSQL types a UNION's columns from its first rows.
_OVERVIEW_SQL = """
SELECT 'offered' AS part, r.name AS name, CAST(NULL AS DATE) AS day,
    CAST(NULL AS NUMERIC) AS su, CAST(NULL AS NUMERIC) AS cap, CAST(NULL AS TEXT) AS status,
    CAST(NULL AS INTEGER) AS rank
FROM allocations_allocation_resources ar
JOIN allocations_resource r ON r.id = ar.resource_id
WHERE ar.allocation_id = %(allocation)s
UNION ALL
SELECT 'resource', (SELECT r.name FROM allocations_resource r WHERE r.id = g.resource_id),
    NULL, g.su, NULL, NULL, NULL
FROM (
    SELECT resource_id, SUM(su) AS su FROM allocations_usagedaily
    WHERE allocation_id = %(allocation)s
        AND (CAST(%(member)s AS BIGINT) IS NULL OR user_id = %(member)s)
    GROUP BY resource_id
) g
UNION ALL
SELECT 'day', NULL, day, SUM(su), NULL, NULL, NULL FROM allocations_usagedaily
WHERE allocation_id = %(allocation)s AND day >= %(start)s AND day <= %(today)s
GROUP BY day
UNION ALL
SELECT 'member', t.name, NULL, t.su_used, t.su_cap, t.status, t.rank FROM (
    SELECT COALESCE(NULLIF(TRIM(u.first_name || ' ' || u.last_name), ''), u.username) AS name,
        m.su_used, m.su_cap, m.status,
        ROW_NUMBER() OVER (ORDER BY m.su_used DESC, u.username) AS rank
    FROM allocations_membership m JOIN accounts_user u ON u.id = m.user_id
    WHERE m.allocation_id = %(allocation)s AND m.status <> %(deleted)s AND %(members)s = 1
    ORDER BY m.su_used DESC, u.username
    LIMIT 10
) t
"""


def _by_name(name: str) -> tuple[str, str]:
    """Names in the order a reader expects, whatever the database's collation."""
    return name.casefold(), name


def _by_first_name(row: tuple) -> tuple[str, str]:
    return _by_name(row[0])


@dataclass(frozen=True)
class Overview:
    """What the allocation page shows beside the balance."""

    resources: list[str]  # the resources the allocation offers, by name
    by_resource: list[tuple[str, Decimal]]  # SUs by resource name, of usage so far
    forecast: "Forecast"
    top_members: list[dict]  # name, su_used, su_cap, status: most used first


def allocation_overview(
    *, allocation: Allocation, today: dt.date, member: User | None, with_members: bool
) -> Overview:
    """The allocation page's figures in one query: by resource of the whole allocation,
    or of `member` alone (a plain member sees only their own usage); the forecast of the
    whole allocation's usage; and the top members when `with_members`."""
    first, last = rate_window(start=allocation.start, end=allocation.end, today=today)
    rows = fetch(
        _OVERVIEW_SQL,
        {
            "allocation": allocation.pk,
            "member": None if member is None else member.pk,
            "start": first,
            "today": last,
            "deleted": str(Status.DELETED),
            "members": 1 if with_members else 0,
        },
        decimals=["su", "cap"],
        dates=["day"],
    )
    parts = defaultdict(list)
    for row in rows:
        parts[row["part"]].append(row)
    return Overview(
        resources=sorted((r["name"] for r in parts["offered"]), key=_by_name),
        by_resource=sorted(((r["name"], r["su"]) for r in parts["resource"]), key=_by_first_name),
        forecast=forecast(
            points=sorted((r["day"], r["su"]) for r in parts["day"]),
            start=allocation.start,
            end=allocation.end,
            budget=allocation.su_budget,
            remaining=allocation.su_remaining,
            today=today,
        ),
        top_members=[
            {"name": r["name"], "su_used": r["su"], "su_cap": r["cap"], "status": r["status"]}
            for r in sorted(parts["member"], key=lambda r: r["rank"])
        ],
    )


def allocation_forecast(*, allocation: Allocation, today: dt.date) -> "Forecast":
    """The forecast of the allocation's whole usage from the rollups of the burn-rate
    window: one query whatever the number of usage records."""
    first, last = rate_window(start=allocation.start, end=allocation.end, today=today)
    return forecast(
        points=rollup_usage_by_day(allocation=allocation, start=first, end=last),
        start=allocation.start,
        end=allocation.end,
        budget=allocation.su_budget,
        remaining=allocation.su_remaining,
        today=today,
    )


def usage_by_member_period(
    *,
    allocation: Allocation,
    start: dt.date,
    end: dt.date,
    bucket: str = "day",
    viewer: User | None = None,
) -> list[tuple]:
    """(member, first day of the period, SUs), unordered. With a viewer who is a plain
    member, everyone else is one "Other members" series: members see their own usage,
    not each colleague's."""
    sql = _USAGE_BY_MEMBER_SQL.format(period=_period_sql(bucket))
    rows = _usage_rows(sql, allocation, start, end)
    if viewer is None:
        return rows
    from allocations.charts import OTHERS

    return [(name if name == viewer.username else OTHERS, p, su) for name, p, su in rows]


def usage_by_resource_period(
    *, allocation: Allocation, start: dt.date, end: dt.date, bucket: str = "day"
) -> list[tuple]:
    """(resource, first day of the period, SUs), unordered."""
    sql = _USAGE_BY_RESOURCE_SQL.format(period=_period_sql(bucket))
    return _usage_rows(sql, allocation, start, end)


def budget_diffs(*, allocation: Allocation) -> list[tuple]:
    """(day, budget after each diff), in time order: one query on the diffs."""
    return [
        (created.astimezone(dt.UTC).date(), budget)
        for created, budget in AllocationChange.objects.filter(allocation=allocation)
        .order_by("created", "id")
        .values_list("created", "su_budget")
    ]


# The daily usage and the budget diffs in one round trip: the diffs are the rows with
# a creation time, and a handful per allocation.
_BURNDOWN_SQL = """
SELECT day, SUM(su), NULL, NULL FROM allocations_usagedaily
WHERE allocation_id = %(allocation)s AND day >= %(start)s AND day <= %(end)s
GROUP BY day
UNION ALL
SELECT NULL, su_budget, created, id FROM allocations_allocationchange
WHERE allocation_id = %(allocation)s
"""


def burndown_series(
    *, allocation: Allocation, start: dt.date, end: dt.date
) -> tuple[list[tuple], list[tuple]]:
    """What the burn-down draws, in one query: budget_diffs(allocation) and
    rollup_usage_by_day(allocation, start, end)."""
    params = {"allocation": allocation.pk, "start": start, "end": end}
    with rows_cursor() as cursor:
        cursor.execute(_BURNDOWN_SQL, params)
        rows = cursor.fetchall()
    sqlite = connection.vendor != "postgresql"
    used, diffs = [], []
    for day, amount, created, pk in rows:
        if sqlite:
            # As in _usage_rows; the creation time comes as naive UTC text.
            amount = Decimal(amount).quantize(SU_QUANTUM)
            if created is not None:
                created = parse_datetime(created).replace(tzinfo=dt.UTC)
        if created is None:
            used.append((day, amount))
        else:
            diffs.append((created, pk, amount))
    used.sort()
    diffs.sort()
    steps = [(created.astimezone(dt.UTC).date(), budget) for created, _, budget in diffs]
    return steps, used


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
