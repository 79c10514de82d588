"""May this member charge this allocation now, and holds (liens) on its budget.

The one rule for charging (three levels of status, each changed on its own):
the project, the allocation and the membership are all ACTIVE, and now lies inside
the allocation's dates and the membership's dates. `charge_refusal` is that rule;
admission and holds add the balance check on top of it.

Reason codes (the documented list, also in README):
"""

import datetime as dt
import functools
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import User
from allocations.adjustments import moved
from allocations.conversion import SU_LIMIT, parse_decimal, parse_su, su_for
from allocations.models import (
    Allocation,
    Cluster,
    Hold,
    Membership,
    Project,
    Rate,
    Resource,
    Status,
)
from portal.rows import columns, instances
from portal.rows import cursor as rows_cursor


class Reason(StrEnum):
    UNKNOWN_USER = "unknown_user"
    UNKNOWN_ALLOCATION = "unknown_allocation"
    UNKNOWN_RESOURCE = "unknown_resource"
    NOT_A_MEMBER = "not_a_member"
    RESOURCE_NOT_IN_ALLOCATION = "resource_not_in_allocation"
    NO_RATE = "no_rate"
    PROJECT_INACTIVE = "project_inactive"
    ALLOCATION_INACTIVE = "allocation_inactive"
    ALLOCATION_NOT_STARTED = "allocation_not_started"
    ALLOCATION_ENDED = "allocation_ended"
    MEMBERSHIP_INACTIVE = "membership_inactive"
    MEMBERSHIP_NOT_STARTED = "membership_not_started"
    MEMBERSHIP_ENDED = "membership_ended"
    ALLOCATION_EXHAUSTED = "allocation_exhausted"
    MEMBER_CAP_EXHAUSTED = "member_cap_exhausted"
    HOLD_EXISTS = "hold_exists"


MESSAGES = {
    Reason.UNKNOWN_USER: "No user with this name.",
    Reason.UNKNOWN_ALLOCATION: "No allocation (account) with this name on this cluster.",
    Reason.UNKNOWN_RESOURCE: "No resource with this name on this cluster.",
    Reason.NOT_A_MEMBER: "The user is not a member of this allocation.",
    Reason.RESOURCE_NOT_IN_ALLOCATION: "The allocation does not include this resource.",
    Reason.NO_RATE: "No rate is in force for this resource now.",
    Reason.PROJECT_INACTIVE: "The project is not active.",
    Reason.ALLOCATION_INACTIVE: "The allocation is not active.",
    Reason.ALLOCATION_NOT_STARTED: "The allocation has not started yet.",
    Reason.ALLOCATION_ENDED: "The allocation has ended.",
    Reason.MEMBERSHIP_INACTIVE: "The membership is not active.",
    Reason.MEMBERSHIP_NOT_STARTED: "The membership has not started yet.",
    Reason.MEMBERSHIP_ENDED: "The membership has ended.",
    Reason.ALLOCATION_EXHAUSTED: "The allocation has too few SUs left for this estimate.",
    Reason.MEMBER_CAP_EXHAUSTED: "The member's cap has too few SUs left for this estimate.",
    Reason.HOLD_EXISTS: "This job already has an open hold.",
}
__doc__ += "\n".join(f"- {r.value}: {m}" for r, m in MESSAGES.items())

# Reasons about names that do not resolve: the API answers 404 for these, 409 for the rest.
UNKNOWN = {Reason.UNKNOWN_USER, Reason.UNKNOWN_ALLOCATION, Reason.UNKNOWN_RESOURCE}


def charge_refusal(
    *, project_status: str, allocation: Allocation, membership: Membership, at: dt.datetime
) -> Reason | None:
    """Why this member may not charge this allocation at `at`, or None if they may."""
    return allocation_refusal(
        project_status=project_status, allocation=allocation, at=at
    ) or membership_refusal(membership=membership, at=at)


def allocation_refusal(
    *, project_status: str, allocation: Allocation, at: dt.datetime
) -> Reason | None:
    """The project and allocation levels of the rule: why nobody may charge it at `at`."""
    day = at.astimezone(dt.UTC).date()
    if project_status != Status.ACTIVE:
        return Reason.PROJECT_INACTIVE
    if allocation.status != Status.ACTIVE:
        return Reason.ALLOCATION_INACTIVE
    if day < allocation.start:
        return Reason.ALLOCATION_NOT_STARTED
    if day > allocation.end:
        return Reason.ALLOCATION_ENDED
    return None


def membership_refusal(*, membership: Membership, at: dt.datetime) -> Reason | None:
    """The membership level of the rule alone."""
    day = at.astimezone(dt.UTC).date()
    if membership.status != Status.ACTIVE:
        return Reason.MEMBERSHIP_INACTIVE
    if day < membership.start:
        return Reason.MEMBERSHIP_NOT_STARTED
    if membership.end is not None and day > membership.end:
        return Reason.MEMBERSHIP_ENDED
    return None


def member_remaining(allocation: Allocation, membership: Membership) -> Decimal:
    """min(cap - used - held, allocation remaining); the pool when there is no cap."""
    pool = allocation.su_remaining
    if membership.su_cap is None:
        return pool
    return min(membership.su_cap - membership.su_used - membership.su_held, pool)


@dataclass
class Admission:
    allowed: bool
    reason: Reason | None
    estimate_su: Decimal | None = None
    allocation: Allocation | None = None
    membership: Membership | None = None
    resource: Resource | None = None
    rate: Rate | None = None

    @property
    def message(self) -> str:
        return MESSAGES[self.reason] if self.reason else "Admitted."

    @property
    def allocation_remaining(self) -> Decimal | None:
        return self.allocation.su_remaining if self.allocation else None

    @property
    def member_remaining(self) -> Decimal | None:
        if self.allocation is None or self.membership is None:
            return None
        return member_remaining(self.allocation, self.membership)


class AdmissionRefused(ValidationError):
    def __init__(self, admission: Admission):
        self.admission = admission
        super().__init__(admission.message, code=str(admission.reason))


def parse_estimate(
    *, estimate_su=None, count=None, wall_seconds=None
) -> tuple[Decimal | None, Decimal | None]:
    """Returns (SUs, raw unit-seconds): the estimate is given either in SUs or as a
    resource count and a wall time, which the rate in force turns into SUs."""
    if estimate_su not in (None, ""):
        if count not in (None, "") or wall_seconds not in (None, ""):
            raise ValidationError("Give the estimate in SUs or as count and wall time, not both.")
        su = parse_su(estimate_su, field="estimate_su")
        if su < 0:
            raise ValidationError({"estimate_su": "The estimate cannot be negative."})
        return su, None
    if count in (None, "") or wall_seconds in (None, ""):
        raise ValidationError("Give estimate_su, or both count and wall_seconds.")
    count = parse_decimal(count, field="count", places=3, digits=12)
    # Under 10**10 s (317 years): a hold's expiry stays a date Python can represent.
    wall = parse_decimal(wall_seconds, field="wall_seconds", places=0, digits=10)
    if count <= 0:
        raise ValidationError({"count": "The count must be positive."})
    if wall <= 0:
        raise ValidationError({"wall_seconds": "The wall time must be positive."})
    return None, count * wall


# Every model _resolve reads, in the order of its columns.
_RESOLVED = (
    (Allocation, "a"),
    (Project, "p"),
    (Membership, "m"),
    (User, "u"),
    (Rate, "rt"),
    (Resource, "rs"),
)


@functools.cache
def _resolve_sql(vendor: str) -> str:
    """_resolve's statement, built once from the models' columns."""
    through = Allocation.resources.through._meta.db_table
    selected = ", ".join(columns(model, alias) for model, alias in _RESOLVED)
    return f"""
        SELECT {selected}, ids.user_id IS NOT NULL, ids.resource_id IS NOT NULL,
               EXISTS (SELECT 1 FROM {through} ar
                       WHERE ar.allocation_id = ids.allocation_id
                         AND ar.resource_id = ids.resource_id)
        FROM (SELECT
            (SELECT id FROM allocations_allocation WHERE cluster_id = %s AND name = %s)
                AS allocation_id,
            (SELECT id FROM accounts_user WHERE username = %s) AS user_id,
            (SELECT id FROM allocations_resource WHERE cluster_id = %s AND lower(name) = lower(%s))
                AS resource_id
        ) ids
        LEFT JOIN allocations_allocation a ON a.id = ids.allocation_id
        LEFT JOIN allocations_project p ON p.id = a.project_id
        LEFT JOIN allocations_membership m
            ON m.allocation_id = ids.allocation_id AND m.user_id = ids.user_id
        LEFT JOIN accounts_user u ON u.id = m.user_id
        LEFT JOIN allocations_rate rt ON rt.id = (
            SELECT r.id FROM allocations_rate r
            WHERE r.resource_id = ids.resource_id AND r.start <= %s
              AND (r."end" IS NULL OR r."end" > %s)
            ORDER BY r.start LIMIT 1)
        LEFT JOIN allocations_resource rs ON rs.id = rt.resource_id
    """  # noqa: S608 (table and column names from the models; values are parameters)


def _resolve(
    *, cluster: Cluster, username: str, account: str, resource_name: str, at: dt.datetime
) -> Admission:
    """Resolves the names in one query, whatever the size of the usage table: the
    allocation with its project and whether it includes the resource, the membership
    with its user, and the resource's rate in force, with what tells an unknown name
    from a missing link. Admission runs at every job submission: one statement, and no
    ORM compilation of three, is most of its cost. (Resource names are unique per
    cluster without case, as the constraint on lower(name) says.)"""
    at_value = connection.ops.adapt_datetimefield_value(at)
    with rows_cursor() as cursor:
        cursor.execute(
            _resolve_sql(connection.vendor),
            [cluster.pk, account, username, cluster.pk, resource_name, at_value, at_value],
        )
        row = cursor.fetchone()
    found, (user_known, resource_known, has_resource) = instances(
        row, [model for model, _ in _RESOLVED]
    )
    objects = dict(zip([model for model, _ in _RESOLVED], found, strict=True))
    allocation, membership, rate = objects[Allocation], objects[Membership], objects[Rate]
    if allocation is None:
        return Admission(False, Reason.UNKNOWN_ALLOCATION)
    allocation.project = objects[Project]
    allocation.has_resource = bool(has_resource)
    if membership is None:
        reason = Reason.NOT_A_MEMBER if user_known else Reason.UNKNOWN_USER
        return Admission(False, reason, allocation=allocation)
    membership.user = objects[User]
    if rate is None:
        reason = Reason.NO_RATE if resource_known else Reason.UNKNOWN_RESOURCE
        return Admission(False, reason, allocation=allocation, membership=membership)
    rate.resource = objects[Resource]
    return Admission(
        True, None, allocation=allocation, membership=membership, resource=rate.resource, rate=rate
    )


def _judge(admission: Admission, estimate_su, raw, at: dt.datetime) -> Admission:
    """Applies the status rule and the balances to resolved (possibly locked) rows."""
    allocation, membership = admission.allocation, admission.membership
    if not allocation.has_resource:
        admission.allowed, admission.reason = False, Reason.RESOURCE_NOT_IN_ALLOCATION
        return admission
    su = estimate_su if estimate_su is not None else su_for(raw, admission.rate.su_per_unit_hour)
    if su >= SU_LIMIT:
        # It could be neither shown nor held (NUMERIC(20, 4)); no real job is this large.
        raise ValidationError({"count": f"count x wall_seconds comes to {su} SUs, too large."})
    admission.estimate_su = su
    refusal = charge_refusal(
        project_status=allocation.project.status,
        allocation=allocation,
        membership=membership,
        at=at,
    )
    if refusal is None and su > allocation.su_remaining:
        refusal = Reason.ALLOCATION_EXHAUSTED
    if refusal is None and su > member_remaining(allocation, membership):
        refusal = Reason.MEMBER_CAP_EXHAUSTED
    admission.allowed, admission.reason = refusal is None, refusal
    return admission


def admission_check(
    *,
    cluster: Cluster,
    username: str,
    account: str,
    resource: str,
    estimate_su=None,
    count=None,
    wall_seconds=None,
    at: dt.datetime | None = None,
) -> Admission:
    """May `username` charge `account` for about this much on `resource` now? Reads only."""
    estimate, raw = parse_estimate(estimate_su=estimate_su, count=count, wall_seconds=wall_seconds)
    at = at or timezone.now()
    admission = _resolve(
        cluster=cluster, username=username, account=account, resource_name=resource, at=at
    )
    if not admission.allowed:
        return admission
    return _judge(admission, estimate, raw, at)


# --- holds ------------------------------------------------------------------------------


def _hold_ttl(wall_seconds) -> dt.timedelta:
    grace = dt.timedelta(hours=settings.HOLD_GRACE_HOURS)
    if wall_seconds not in (None, ""):
        # parse_estimate has checked it is a whole number; it may be written "3600.0".
        return dt.timedelta(seconds=int(Decimal(str(wall_seconds).strip()))) + grace
    return dt.timedelta(hours=settings.HOLD_DEFAULT_TTL_HOURS)


@transaction.atomic
def hold_create(
    *,
    cluster: Cluster,
    actor: User | None,
    username: str,
    account: str,
    resource: str,
    job_id: str,
    estimate_su=None,
    count=None,
    wall_seconds=None,
) -> tuple[Hold, Admission]:
    """Reserves a job's estimate if it is admitted; raises AdmissionRefused otherwise."""
    job_id = (job_id or "").strip()
    if not job_id or len(job_id) > 64:
        raise ValidationError({"job_id": "Give the job id (at most 64 characters)."})
    estimate, raw = parse_estimate(estimate_su=estimate_su, count=count, wall_seconds=wall_seconds)
    now = timezone.now()
    admission = _resolve(
        cluster=cluster, username=username, account=account, resource_name=resource, at=now
    )
    if not admission.allowed:
        raise AdmissionRefused(admission)
    # Lock the allocation, then the membership (services.py's lock order), and judge on
    # the locked rows: two holds racing for the last SUs queue here, and the second sees
    # the first's SUs as held.
    locked = Allocation.objects.select_for_update(of=("self",)).select_related("project")
    allocation = locked.get(pk=admission.allocation.pk)
    allocation.has_resource = admission.allocation.has_resource
    admission.allocation = allocation
    admission.membership = Membership.objects.select_for_update().get(pk=admission.membership.pk)
    # Before the balance: a scheduler retrying its request must hear that the hold exists,
    # not that the SUs its first attempt holds are missing.
    if Hold.objects.filter(cluster=cluster, job_id=job_id, state=Hold.State.OPEN).exists():
        admission.allowed, admission.reason = False, Reason.HOLD_EXISTS
        raise AdmissionRefused(admission)
    _judge(admission, estimate, raw, now)
    if not admission.allowed:
        raise AdmissionRefused(admission)
    su = admission.estimate_su
    if su <= 0:
        raise ValidationError({"estimate_su": "A hold needs a positive estimate."})
    try:
        with transaction.atomic():
            hold = Hold.objects.create(
                cluster=cluster,
                allocation=allocation,
                user=admission.membership.user,
                resource=admission.resource,
                job_id=job_id,
                su_amount=su,
                expires_at=now + _hold_ttl(wall_seconds),
                actor=actor,
            )
    except IntegrityError:
        # The same job held on another allocation at this very moment.
        admission.allowed, admission.reason = False, Reason.HOLD_EXISTS
        raise AdmissionRefused(admission) from None
    _add_held(allocation.pk, admission.membership.pk, su)
    allocation.su_held += su
    admission.membership.su_held += su
    return hold, admission


def _add_held(allocation_id: int, membership_id: int | None, amount: Decimal) -> None:
    Allocation.objects.filter(pk=allocation_id).update(su_held=moved("su_held", amount))
    if membership_id is not None:
        Membership.objects.filter(pk=membership_id).update(su_held=moved("su_held", amount))


def close_holds(holds: list[Hold], *, state: str, now: dt.datetime | None = None) -> int:
    """Closes open holds and gives their SUs back. The caller holds the allocations'
    row locks. Each hold is claimed with a conditional UPDATE, so a hold released by
    the API while the expiry task runs is given back once."""
    now = now or timezone.now()
    members = {
        (m.allocation_id, m.user_id): m.pk
        for m in Membership.objects.filter(
            allocation_id__in={h.allocation_id for h in holds},
            user_id__in={h.user_id for h in holds},
        )
    }
    closed = 0
    for hold in holds:
        claimed = Hold.objects.filter(pk=hold.pk, state=Hold.State.OPEN).update(
            state=state, closed_at=now
        )
        if claimed != 1:
            continue
        _add_held(
            hold.allocation_id, members.get((hold.allocation_id, hold.user_id)), -hold.su_amount
        )
        hold.state, hold.closed_at = state, now
        closed += 1
    return closed


@transaction.atomic
def hold_release(*, hold: Hold) -> Hold:
    # Lock the allocation so the release and a concurrent hold see one balance. get(), not
    # first(): first() orders by the cluster's name, and the join would lock the cluster row.
    Allocation.objects.select_for_update().get(pk=hold.allocation_id)
    if close_holds([hold], state=Hold.State.RELEASED) != 1:
        hold.refresh_from_db()
        raise ValidationError(
            f"This hold is already {hold.get_state_display().lower()}.", code="hold_not_open"
        )
    return hold


def holds_expire(*, now: dt.datetime | None = None) -> int:
    """Releases open holds past their expiry; running it again releases nothing more."""
    now = now or timezone.now()
    stale = list(
        Hold.objects.filter(state=Hold.State.OPEN, expires_at__lt=now).order_by("allocation_id")
    )
    closed = 0
    for allocation_id in sorted({h.allocation_id for h in stale}):
        with transaction.atomic():
            Allocation.objects.select_for_update().get(pk=allocation_id)
            closed += close_holds(
                [h for h in stale if h.allocation_id == allocation_id],
                state=Hold.State.EXPIRED,
                now=now,
            )
    return closed
