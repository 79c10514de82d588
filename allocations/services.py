"""Every write to the allocation domain goes through a function here.

Conventions:
- keyword-only arguments; `actor` is the user acting (None for automated work);
- refusals raise django.core.exceptions.ValidationError (field-level where a field is
  to blame) or PermissionDenied, and leave the database unchanged;
- lock order, to keep concurrent writers from deadlocking: UsageImport (imports.py
  locks it before charging a batch), Project, Cluster, Resource, Rate, Allocation,
  ChangeRequest, Membership; several rows of one kind in ascending id order.
"""

import bisect
import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import ApiToken, User
from accounts.services import audit_decision, audit_status
from allocations.adjustments import add_to_used
from allocations.admission import close_holds
from allocations.conversion import SU_LIMIT, parse_decimal, parse_rate, parse_su, su_for
from allocations.models import (
    RAW_DIGITS,
    RAW_PLACES,
    Allocation,
    AllocationChange,
    ChangeRequest,
    ChangeRequestEvent,
    Cluster,
    ClusterCapacityChange,
    Hold,
    Membership,
    MembershipChange,
    Project,
    ProjectChange,
    Rate,
    RateCorrection,
    Resource,
    Status,
    SyncReport,
    Usage,
    UsageAdjustment,
)
from allocations.notifications import request_event_announce
from allocations.rollups import rollup_keys_for, rollups_touched
from allocations.selectors import user_administers_cluster, user_manages_project
from allocations.usage_store import store_for

State = ChangeRequest.State


# --- permission guards ------------------------------------------------------------


def _require_manager(actor: User, project: Project) -> None:
    if not user_manages_project(user=actor, project=project):
        raise PermissionDenied("Only the project's PI or managers may do this.")


def _require_cluster_admin(actor: User, cluster: Cluster) -> None:
    if not user_administers_cluster(user=actor, cluster=cluster):
        raise PermissionDenied(f"Only admins of {cluster.name} may do this.")


def _require_reason(reason: str, what: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": f"Say why you {what}."})
    return reason


def _su(value, field: str) -> Decimal:
    return parse_su(value, field=field)


def _lock_allocation(allocation_id: int) -> Allocation:
    return (
        Allocation.objects.select_for_update(of=("self",))
        .select_related("cluster")
        .get(pk=allocation_id)
    )


# --- projects -----------------------------------------------------------------------


@transaction.atomic
def project_create(
    *,
    actor: User,
    title: str,
    pi: User,
    description: str = "",
    origination: str = Project._meta.get_field("origination").default,
    originated_id: str = "",
) -> Project:
    if not (actor.is_superuser or actor.pk == pi.pk):
        raise PermissionDenied("Only a site admin may create a project for someone else.")
    project = Project(
        title=title.strip(),
        pi=pi,
        description=description,
        origination=origination,
        originated_id=originated_id,
    )
    project.full_clean()
    project.save()
    ProjectChange.objects.create(
        project=project, kind=ProjectChange.Kind.CREATED, status=project.status, actor=actor
    )
    return project


@transaction.atomic
def project_set_status(*, actor: User, project: Project, status: str, reason: str) -> Project:
    """Freezing a project leaves its allocations untouched: charging checks all three
    levels, so unfreezing restores exactly what was there before."""
    may = (
        actor.is_superuser
        or Cluster.objects.filter(allocations__project=project, admins=actor).exists()
    )
    if not may:
        raise PermissionDenied("Only a site admin or an admin of one of its clusters may do this.")
    if status not in Status.values:
        raise ValidationError({"status": f"{status!r} is not a valid status."})
    reason = _require_reason(reason, "change the project's status")
    # Lock so two admins changing the status at once leave a history that matches.
    project = Project.objects.select_for_update().get(pk=project.pk)
    if project.status == status:
        raise ValidationError({"status": f"The project is already {status}."})
    project.status = status
    project.save(update_fields=["status"])
    ProjectChange.objects.create(
        project=project, kind=ProjectChange.Kind.STATUS, status=status, actor=actor, reason=reason
    )
    audit_status(actor=actor, target=project, status=status, reason=reason)
    return project


@transaction.atomic
def project_add_manager(*, actor: User, project: Project, user: User) -> None:
    if not (actor.is_superuser or actor.pk == project.pi_id):
        raise PermissionDenied("Only the PI may name managers.")
    if user.pk == project.pi_id or project.managers.filter(pk=user.pk).exists():
        raise ValidationError({"user": f"{user.username} already manages this project."})
    project.managers.add(user)
    ProjectChange.objects.create(
        project=project, kind=ProjectChange.Kind.MANAGER_ADDED, subject=user, actor=actor
    )


@transaction.atomic
def project_remove_manager(*, actor: User, project: Project, user: User) -> None:
    if not (actor.is_superuser or actor.pk == project.pi_id):
        raise PermissionDenied("Only the PI may remove managers.")
    if not project.managers.filter(pk=user.pk).exists():
        raise ValidationError({"user": f"{user.username} is not a manager of this project."})
    project.managers.remove(user)
    ProjectChange.objects.create(
        project=project, kind=ProjectChange.Kind.MANAGER_REMOVED, subject=user, actor=actor
    )


# --- allocations and their diffs ---------------------------------------------------


def _apply_change(
    *,
    allocation: Allocation,
    kind: str,
    actor: User | None,
    reason: str,
    su_delta: Decimal = Decimal(0),
    status: str = "",
    end: dt.date | None = None,
    change_request: ChangeRequest | None = None,
) -> AllocationChange:
    """Writes one diff and applies it. The caller must hold the allocation's row lock
    (select_for_update), so the budget read here is the budget the diff builds on."""
    new_budget = allocation.su_budget + su_delta
    if new_budget < 0:
        raise ValidationError(
            {"su_delta": f"This would make the budget {new_budget} SUs; it cannot go below 0."}
        )
    # SUs already used or held for running jobs cannot be taken back.
    committed = allocation.su_used + allocation.su_held
    if su_delta < 0 and new_budget < committed:
        raise ValidationError(
            {
                "su_delta": f"At most {max(allocation.su_budget - committed, 0)} unused SUs can "
                f"be given back; {allocation.su_used} SUs are used and {allocation.su_held} held."
            }
        )
    if end is not None and end < allocation.start:
        raise ValidationError(
            {"end": f"The end date cannot be before the start date ({allocation.start})."}
        )
    if status and status not in Status.values:
        raise ValidationError({"status": f"{status!r} is not a valid status."})
    if not su_delta and not status and end is None:
        raise ValidationError("The change changes nothing.")
    change = AllocationChange.objects.create(
        allocation=allocation,
        kind=kind,
        su_delta=su_delta,
        su_budget=new_budget,
        status=status,
        end=end,
        change_request=change_request,
        actor=actor,
        reason=reason,
    )
    allocation.su_budget = new_budget
    fields = ["su_budget"]
    if status:
        allocation.status = status
        fields.append("status")
    if end is not None:
        allocation.end = end
        fields.append("end")
    allocation.save(update_fields=fields)
    return change


@transaction.atomic
def allocation_request_create(
    *,
    actor: User,
    project: Project,
    cluster: Cluster,
    name: str,
    resources: Iterable[Resource],
    su_amount,
    start: dt.date,
    end: dt.date,
    justification: str,
    priority: int = ChangeRequest.Priority.NORMAL,
) -> ChangeRequest:
    """A PI asks for a new allocation: an INACTIVE allocation with a pending request
    to make it ACTIVE with the SUs and dates asked for. The PI becomes its first member."""
    _require_manager(actor, project)
    # Lock, as project_set_status does: a freeze cannot slip in between this check and
    # the new allocation, and the status checked is the database's, not a stale copy's.
    project = Project.objects.select_for_update().get(pk=project.pk)
    if project.status != Status.ACTIVE:
        raise ValidationError(
            {"project": "New allocations can only be requested for an active project."}
        )
    su_amount = _su(su_amount, "su_amount")
    if su_amount <= 0:
        raise ValidationError({"su_amount": "Ask for a positive number of SUs."})
    resources = list(resources)
    if not resources:
        raise ValidationError({"resources": "Choose at least one resource."})
    foreign = [r.name for r in resources if r.cluster_id != cluster.pk]
    if foreign:
        raise ValidationError({"resources": f"Not on {cluster.name}: {', '.join(foreign)}."})
    if not (justification or "").strip():
        raise ValidationError({"justification": "Explain what the SUs are for."})
    allocation = Allocation(
        project=project, cluster=cluster, name=name, status=Status.INACTIVE, start=start, end=end
    )
    allocation.full_clean()
    allocation.save()
    allocation.resources.set(resources)
    AllocationChange.objects.create(
        allocation=allocation,
        kind=AllocationChange.Kind.CREATED,
        su_budget=0,
        status=Status.INACTIVE,
        start=start,
        end=end,
        actor=actor,
        reason="Requested",
    )
    request = ChangeRequest(
        allocation=allocation,
        kind=ChangeRequest.Kind.NEW_ALLOCATION,
        su_delta=su_amount,
        requested_status=Status.ACTIVE,
        requested_end=end,
        justification=justification.strip(),
        priority=priority,
        requester=actor,
    )
    request.full_clean()
    request.save()
    request_event_announce(
        ChangeRequestEvent.objects.create(
            request=request, kind=ChangeRequestEvent.Kind.CREATED, actor=actor
        )
    )
    _membership_create(allocation=allocation, user=project.pi, actor=actor, reason="PI")
    return request


@transaction.atomic
def allocation_change_apply(
    *,
    actor: User | None,
    allocation: Allocation,
    reason: str,
    su_delta=None,
    status: str = "",
    end: dt.date | None = None,
    kind: str = AllocationChange.Kind.ADMIN,
) -> AllocationChange:
    """A change with no request behind it: an admin's top-up, freeze or extension, or an
    automated workflow (expiry, imports) when actor is None."""
    if actor is not None:
        _require_cluster_admin(actor, allocation.cluster)
    reason = _require_reason(reason, "make this change")
    delta = _su(su_delta, "su_delta") if su_delta is not None else Decimal(0)
    # Lock: a concurrent approval or top-up must build on this budget, not a stale one.
    locked = _lock_allocation(allocation.pk)
    if status == locked.status:
        status = ""
    change = _apply_change(
        allocation=locked,
        kind=kind,
        actor=actor,
        reason=reason,
        su_delta=delta,
        status=status,
        end=end,
    )
    audit_status(actor=actor, target=locked, status=status, reason=reason)
    allocation.refresh_from_db()
    return change


@transaction.atomic
def allocation_expire(*, allocation_id: int, today: dt.date) -> AllocationChange | None:
    """Closes an ACTIVE allocation whose end date has passed: a diff of kind EXPIRY,
    with no actor, makes it INACTIVE. Returns None (and writes nothing) when, under the
    lock, it is no longer active or no longer past its end: an admin extended it
    meanwhile, or an earlier run closed it already."""
    allocation = _lock_allocation(allocation_id)
    if allocation.status != Status.ACTIVE or allocation.end >= today:
        return None
    return _apply_change(
        allocation=allocation,
        kind=AllocationChange.Kind.EXPIRY,
        actor=None,
        reason=f"Ended on {allocation.end:%Y-%m-%d}",
        status=Status.INACTIVE,
    )


def allocation_set_status(*, actor: User, allocation: Allocation, status: str, reason: str):
    if status == allocation.status:
        raise ValidationError({"status": f"The allocation is already {status}."})
    return allocation_change_apply(actor=actor, allocation=allocation, status=status, reason=reason)


# --- change requests ---------------------------------------------------------------


@transaction.atomic
def change_request_submit(
    *,
    actor: User,
    allocation: Allocation,
    justification: str,
    su_delta=None,
    requested_status: str = "",
    requested_end: dt.date | None = None,
    priority: int = ChangeRequest.Priority.NORMAL,
) -> ChangeRequest:
    _require_manager(actor, allocation.project)
    if allocation.status == Status.DELETED:
        raise ValidationError("This allocation is closed; request a new one instead.")
    delta = _su(su_delta, "su_delta") if su_delta not in (None, "") else None
    committed = allocation.su_used + allocation.su_held
    if delta is not None and delta < 0 and allocation.su_budget + delta < committed:
        raise ValidationError(
            {
                "su_delta": f"At most {max(allocation.su_budget - committed, 0)} "
                "unused SUs can be given back."
            }
        )
    if requested_end is not None and requested_end < allocation.start:
        raise ValidationError(
            {"requested_end": f"The end date cannot be before the start date ({allocation.start})."}
        )
    if requested_status == allocation.status:
        raise ValidationError(
            {"requested_status": f"The allocation is already {requested_status}."}
        )
    if not (justification or "").strip():
        raise ValidationError({"justification": "Explain why you ask for this change."})
    request = ChangeRequest(
        allocation=allocation,
        kind=ChangeRequest.Kind.CHANGE,
        su_delta=delta,
        requested_status=requested_status or "",
        requested_end=requested_end,
        justification=justification.strip(),
        priority=priority,
        requester=actor,
    )
    request.full_clean()
    request.save()
    request_event_announce(
        ChangeRequestEvent.objects.create(
            request=request, kind=ChangeRequestEvent.Kind.CREATED, actor=actor
        )
    )
    return request


def _lock_request(request: ChangeRequest) -> tuple[Allocation, ChangeRequest]:
    # Allocation first (the documented lock order), then the request: two admins
    # deciding the same request at once queue here, and the second sees it decided.
    allocation = _lock_allocation(request.allocation_id)
    locked = ChangeRequest.objects.select_for_update().get(pk=request.pk)
    return allocation, locked


def _require_pending(request: ChangeRequest, verb: str) -> None:
    if request.state != State.PENDING:
        raise ValidationError(
            f"This request is already {request.get_state_display().lower()}; "
            f"only a pending request can be {verb}.",
            code="not_pending",
        )


def _decide(request: ChangeRequest, *, actor: User, state: str, reason: str, kind: str) -> None:
    request.state = state
    request.decided_by = actor
    request.decided_at = timezone.now()
    request.decision_reason = reason
    request.save(
        update_fields=["state", "decided_by", "decided_at", "decision_reason", "su_approved"]
    )
    request_event_announce(
        ChangeRequestEvent.objects.create(request=request, kind=kind, actor=actor, text=reason)
    )


@transaction.atomic
def change_request_approve(
    *, actor: User, request: ChangeRequest, su_approved=None, reason: str = ""
) -> AllocationChange:
    """Approves a pending request, possibly granting another amount (then a reason is
    required): the diff, the allocation's new state, the decision and its event are
    written in this one transaction."""
    _require_cluster_admin(actor, request.allocation.cluster)
    allocation, request = _lock_request(request)
    _require_pending(request, "approved")
    reason = (reason or "").strip()
    granted = request.su_delta
    if su_approved not in (None, ""):
        granted = _su(su_approved, "su_approved")
        if granted != request.su_delta and not reason:
            raise ValidationError(
                {"reason": "Say why you approve a different amount than requested."}
            )
    if request.kind == ChangeRequest.Kind.NEW_ALLOCATION and (granted is None or granted <= 0):
        raise ValidationError({"su_approved": "A new allocation needs a positive SU amount."})
    request.su_approved = granted
    change = _apply_change(
        allocation=allocation,
        kind=AllocationChange.Kind.REQUEST,
        actor=actor,
        reason=reason or "Approved",
        su_delta=granted or Decimal(0),
        status=request.requested_status if request.requested_status != allocation.status else "",
        end=request.requested_end,
        change_request=request,
    )
    _decide(request, actor=actor, state=State.APPROVED, reason=reason, kind="APPROVED")
    audit_decision(actor=actor, request=request)
    return change


@transaction.atomic
def change_request_reject(*, actor: User, request: ChangeRequest, reason: str) -> ChangeRequest:
    _require_cluster_admin(actor, request.allocation.cluster)
    reason = _require_reason(reason, "reject this request")
    _, request = _lock_request(request)
    _require_pending(request, "rejected")
    _decide(request, actor=actor, state=State.REJECTED, reason=reason, kind="REJECTED")
    audit_decision(actor=actor, request=request)
    return request


@transaction.atomic
def change_request_cancel(
    *, actor: User, request: ChangeRequest, reason: str = ""
) -> ChangeRequest:
    if actor.pk != request.requester_id:
        _require_manager(actor, request.allocation.project)
    _, request = _lock_request(request)
    _require_pending(request, "cancelled")
    _decide(request, actor=actor, state=State.CANCELLED, reason=reason.strip(), kind="CANCELLED")
    return request


@transaction.atomic
def change_request_comment(*, actor: User, request: ChangeRequest, text: str) -> ChangeRequestEvent:
    allocation = request.allocation
    if not (
        user_manages_project(user=actor, project=allocation.project)
        or user_administers_cluster(user=actor, cluster=allocation.cluster)
        or actor.pk == request.requester_id
    ):
        raise PermissionDenied(
            "Only the project's PI or managers and the cluster's admins may comment."
        )
    text = (text or "").strip()
    if not text:
        raise ValidationError({"text": "Write a comment."})
    _require_pending(ChangeRequest.objects.get(pk=request.pk), "commented on")
    event = ChangeRequestEvent.objects.create(
        request=request, kind=ChangeRequestEvent.Kind.COMMENTED, actor=actor, text=text
    )
    request_event_announce(event)
    return event


# --- memberships ---------------------------------------------------------------------


def _require_member_manager(actor: User, allocation: Allocation) -> None:
    if not (
        user_manages_project(user=actor, project=allocation.project)
        or user_administers_cluster(user=actor, cluster=allocation.cluster)
    ):
        raise PermissionDenied("Only the project's PI or managers may manage members.")


def _check_cap(allocation: Allocation, su_cap: Decimal | None) -> None:
    if su_cap is not None and su_cap > allocation.su_budget and allocation.su_budget > 0:
        raise ValidationError(
            {
                "su_cap": f"A cap of {su_cap} SUs is above the allocation's budget of "
                f"{allocation.su_budget} SUs."
            }
        )


def _membership_create(
    *,
    allocation: Allocation,
    user: User,
    actor: User | None,
    su_cap: Decimal | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    reason: str = "",
) -> Membership:
    membership = Membership(
        allocation=allocation, user=user, su_cap=su_cap, start=start or allocation.start, end=end
    )
    membership.full_clean()
    membership.save()
    MembershipChange.objects.create(
        membership=membership,
        kind=MembershipChange.Kind.ADDED,
        su_cap=su_cap,
        status=membership.status,
        actor=actor,
        reason=reason,
    )
    return membership


@transaction.atomic
def membership_add(
    *,
    actor: User,
    allocation: Allocation,
    user: User,
    su_cap=None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    reason: str = "",
) -> Membership:
    """Adds a member, or brings back one who was removed (a membership is never deleted)."""
    _require_member_manager(actor, allocation)
    cap = _su(su_cap, "su_cap") if su_cap not in (None, "") else None
    if cap is not None and cap < 0:
        raise ValidationError({"su_cap": "A cap cannot be negative."})
    # Lock: the cap is checked against a budget that a concurrent approval may change.
    allocation = _lock_allocation(allocation.pk)
    _check_cap(allocation, cap)
    existing = (
        Membership.objects.select_for_update(of=("self",))
        .filter(allocation=allocation, user=user)
        .first()
    )
    if existing is None:
        return _membership_create(
            allocation=allocation,
            user=user,
            actor=actor,
            su_cap=cap,
            start=start,
            end=end,
            reason=reason,
        )
    if existing.status != Status.DELETED:
        raise ValidationError(
            {"user": f"{user.username} is already a member of {allocation.name}."}
        )
    existing.status = Status.ACTIVE
    existing.su_cap = cap
    fields = ["status", "su_cap"]
    # Dates given for the returning member replace the old ones; none given keeps them.
    if start is not None:
        existing.start = start
        fields.append("start")
    if end is not None:
        existing.end = end
        fields.append("end")
    existing.full_clean()
    existing.save(update_fields=fields)
    MembershipChange.objects.create(
        membership=existing,
        kind=MembershipChange.Kind.STATUS,
        status=Status.ACTIVE,
        su_cap=cap,
        actor=actor,
        reason=reason or "Added again",
    )
    return existing


@transaction.atomic
def membership_set_status(
    *, actor: User, membership: Membership, status: str, reason: str = ""
) -> Membership:
    _require_member_manager(actor, membership.allocation)
    if status not in Status.values:
        raise ValidationError({"status": f"{status!r} is not a valid status."})
    # Lock: two managers toggling the same member must leave matching history.
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    if membership.status == status:
        raise ValidationError({"status": f"The membership is already {status}."})
    membership.status = status
    membership.save(update_fields=["status"])
    MembershipChange.objects.create(
        membership=membership,
        kind=MembershipChange.Kind.STATUS,
        status=status,
        actor=actor,
        reason=reason,
    )
    audit_status(actor=actor, target=membership, status=status, reason=reason)
    return membership


@transaction.atomic
def membership_expire(*, membership_id: int, today: dt.date) -> MembershipChange | None:
    """Closes an ACTIVE membership whose own end date has passed (INACTIVE, recorded with
    no actor). None, with nothing written, when the lock shows it is no longer due."""
    membership = Membership.objects.select_for_update().get(pk=membership_id)
    if membership.status != Status.ACTIVE or membership.end is None or membership.end >= today:
        return None
    membership.status = Status.INACTIVE
    membership.save(update_fields=["status"])
    return MembershipChange.objects.create(
        membership=membership,
        kind=MembershipChange.Kind.STATUS,
        status=Status.INACTIVE,
        actor=None,
        reason=f"Ended on {membership.end:%Y-%m-%d}",
    )


def membership_remove(*, actor: User, membership: Membership, reason: str = "") -> Membership:
    return membership_set_status(
        actor=actor, membership=membership, status=Status.DELETED, reason=reason or "Removed"
    )


@transaction.atomic
def membership_set_cap(
    *, actor: User, membership: Membership, su_cap, reason: str = ""
) -> Membership:
    """Sets (or with su_cap=None clears) a member's cap on the shared budget."""
    _require_member_manager(actor, membership.allocation)
    cap = _su(su_cap, "su_cap") if su_cap not in (None, "") else None
    if cap is not None and cap < 0:
        raise ValidationError({"su_cap": "A cap cannot be negative."})
    allocation = _lock_allocation(membership.allocation_id)
    _check_cap(allocation, cap)
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    if membership.su_cap == cap:
        raise ValidationError({"su_cap": "The cap is already set to this."})
    membership.su_cap = cap
    membership.save(update_fields=["su_cap"])
    MembershipChange.objects.create(
        membership=membership,
        kind=MembershipChange.Kind.CAP,
        su_cap=cap,
        actor=actor,
        reason=reason,
    )
    return membership


# --- rates --------------------------------------------------------------------------


def _describe_window(rate: Rate) -> str:
    end = rate.end.strftime("%Y-%m-%d %H:%M") if rate.end else "open"
    return (
        f"{rate.start:%Y-%m-%d %H:%M} to {end} UTC "
        f"({rate.su_per_unit_hour} SU per {rate.resource.unit}-hour)"
    )


def _check_no_overlap(resource: Resource, start, end, exclude_pk=None) -> None:
    overlapping = Rate.objects.filter(resource=resource).filter(
        Q(end__isnull=True) | Q(end__gt=start)
    )
    if end is not None:
        overlapping = overlapping.filter(start__lt=end)
    if exclude_pk is not None:
        overlapping = overlapping.exclude(pk=exclude_pk)
    clash = overlapping.select_related("resource").order_by("start").first()
    if clash is not None:
        raise ValidationError(
            {"start": f"This window overlaps the rate window {_describe_window(clash)}."},
            code="rate_overlap",
        )


@transaction.atomic
def rate_add(
    *,
    actor: User | None,
    resource: Resource,
    su_per_unit_hour,
    start: dt.datetime,
    end: dt.datetime | None = None,
    reason: str = "",
) -> Rate:
    if actor is not None:
        _require_cluster_admin(actor, resource.cluster)
    rate_value = parse_rate(su_per_unit_hour)
    if rate_value < 0:
        raise ValidationError({"su_per_unit_hour": "A rate cannot be negative."})
    if end is not None and end <= start:
        raise ValidationError({"end": "A rate window must end after it starts."})
    # Lock the resource row so two concurrent inserts cannot both pass the overlap
    # check (on PostgreSQL the exclusion constraint would also stop the second).
    Resource.objects.select_for_update().get(pk=resource.pk)
    _check_no_overlap(resource, start, end)
    rate = Rate(
        resource=resource,
        su_per_unit_hour=rate_value,
        start=start,
        end=end,
        reason=reason,
        created_by=actor,
    )
    rate.full_clean()
    rate.save()
    return rate


@transaction.atomic
def rate_close(*, actor: User | None, rate: Rate, end: dt.datetime, reason: str = "") -> Rate:
    """Ends a rate window at `end`. Usage already charged at this rate after `end`
    would lose its rate, so such a close is refused."""
    if actor is not None:
        _require_cluster_admin(actor, rate.resource.cluster)
    Resource.objects.select_for_update().get(pk=rate.resource_id)
    # Lock the rate too: a usage batch charging at it holds it, so the count of usage
    # after the new end below includes that batch's rows.
    rate = Rate.objects.select_for_update(of=("self",)).select_related("resource").get(pk=rate.pk)
    if end <= rate.start:
        raise ValidationError(
            {"end": f"The window starts at {rate.start:%Y-%m-%d %H:%M}; it must end after that."}
        )
    _check_no_overlap(rate.resource, rate.start, end, exclude_pk=rate.pk)
    charged_after = Usage.objects.filter(rate=rate, charged_at__gte=end).count()
    if charged_after:
        raise ValidationError(
            {"end": f"{charged_after} usage records were charged at this rate after that time."}
        )
    RateCorrection.objects.create(
        rate=rate,
        old_su_per_unit_hour=rate.su_per_unit_hour,
        new_su_per_unit_hour=rate.su_per_unit_hour,
        old_end=rate.end,
        new_end=end,
        actor=actor,
        reason=reason.strip() or "Window closed",
    )
    rate.end = end
    rate.save(update_fields=["end"])
    return rate


class RateBook:
    """The rate windows of some resources, for finding the rate in force at a time
    without a query per usage record."""

    def __init__(self, resource_ids: Iterable[int]):
        self._windows: dict[int, list[Rate]] = defaultdict(list)
        for rate in Rate.objects.filter(resource_id__in=set(resource_ids)).order_by("start"):
            self._windows[rate.resource_id].append(rate)
        self._starts = {rid: [r.start for r in rates] for rid, rates in self._windows.items()}

    def rate_at(self, resource_id: int, when: dt.datetime) -> Rate | None:
        starts = self._starts.get(resource_id, [])
        i = bisect.bisect_right(starts, when) - 1
        if i < 0:
            return None
        rate = self._windows[resource_id][i]
        return rate if rate.end is None or when < rate.end else None


# --- usage ----------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageInput:
    job_id: str
    user: User
    allocation: Allocation
    resource: Resource
    raw_unit_seconds: Decimal
    charged_at: dt.datetime
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None


@dataclass(frozen=True)
class UsageBatchResult:
    created: int
    duplicates: int
    su_charged: Decimal
    corrected: int = 0


class BatchRejected(ValidationError):
    """A batch with at least one bad record: nothing was written. `errors` lists
    {"index", "field", "message"} for every bad record."""

    def __init__(self, errors: list[dict]):
        self.errors = errors
        super().__init__(
            [f"record {e['index']}: {e['message']}" for e in errors], code="batch_rejected"
        )


@dataclass(frozen=True)
class BatchNames:
    """The users, allocations and resources a batch names, by id: what its error
    messages say, and which cluster each allocation and resource is on."""

    users: dict[int, str]  # id -> username
    allocations: dict[int, Allocation]
    resources: dict[int, Resource]


# One record of a batch, by ids: (index, job_id, user_id, allocation_id, resource_id,
# raw_unit_seconds, charged_at, started_at, ended_at).
UsageRow = tuple


def _naive(when: dt.datetime | None) -> bool:
    return when is not None and timezone.is_naive(when)


def _input_fault(raw, charged_at, started_at, ended_at) -> tuple[Decimal | None, tuple | None]:
    """The raw amount parsed, or what is wrong with the record's amount and times."""
    try:
        raw = parse_decimal(raw, field="raw_unit_seconds", places=RAW_PLACES, digits=RAW_DIGITS)
    except ValidationError as exc:
        return None, ("raw_unit_seconds", exc.messages[0])
    if raw < 0:
        return None, ("raw_unit_seconds", "the raw amount cannot be negative")
    if timezone.is_naive(charged_at):
        return None, ("charged_at", "the charge time needs a time zone")
    # A naive job time would be read in the server's zone and cannot be compared
    # with an aware one.
    if _naive(started_at):
        return None, ("started_at", "the job's start and end times need a time zone")
    if _naive(ended_at):
        return None, ("ended_at", "the job's start and end times need a time zone")
    if started_at and ended_at and ended_at < started_at:
        return None, ("ended_at", "the job ends before it starts")
    return raw, None


@transaction.atomic
def usage_record_batch(*, cluster: Cluster, records: Sequence[UsageInput]) -> UsageBatchResult:
    """Charges a batch of usage, all or nothing. Jobs already charged (same cluster,
    job, resource and user, same amount) are counted as duplicates and not charged again;
    a job reported again with another amount is corrected by an adjustment."""
    names = BatchNames(
        users={rec.user.pk: rec.user.username for rec in records},
        allocations={rec.allocation.pk: rec.allocation for rec in records},
        resources={rec.resource.pk: rec.resource for rec in records},
    )
    rows = [
        (
            index,
            rec.job_id,
            rec.user.pk,
            rec.allocation.pk,
            rec.resource.pk,
            rec.raw_unit_seconds,
            rec.charged_at,
            rec.started_at,
            rec.ended_at,
        )
        for index, rec in enumerate(records)
    ]
    return usage_record_rows(cluster=cluster, rows=rows, names=names, checked=False)


@transaction.atomic
def usage_record_rows(
    *, cluster: Cluster, rows: Sequence[UsageRow], names: BatchNames, checked: bool
) -> UsageBatchResult:
    """usage_record_batch for records given by ids (UsageRow). With checked=True the
    caller (ingest.usage_ingest) has already made sure that each raw amount is an exact
    non-negative Decimal, that the times are aware with the end not before the start,
    and that no usage key appears twice; those checks are then not repeated."""
    errors: list[dict] = []
    rates = RateBook(names.resources)
    members = set(
        Membership.objects.filter(
            allocation_id__in=names.allocations, user_id__in=names.users
        ).values_list("allocation_id", "user_id")
    )
    includes = set(
        Allocation.resources.through.objects.filter(
            allocation_id__in=names.allocations
        ).values_list("allocation_id", "resource_id")
    )
    foreign_allocations = {pk for pk, a in names.allocations.items() if a.cluster_id != cluster.pk}
    foreign_resources = {pk for pk, r in names.resources.items() if r.cluster_id != cluster.pk}
    # (allocation, resource) pairs that pass the first three checks below.
    usable = {
        (a, r) for a, r in includes if a not in foreign_allocations and r not in foreign_resources
    }

    def name_fault(alloc_id: int, res_id: int, user_id: int) -> tuple | None:
        allocation, resource = names.allocations[alloc_id].name, names.resources[res_id].name
        if alloc_id in foreign_allocations:
            return ("allocation", f"allocation {allocation} is not on {cluster.name}")
        if res_id in foreign_resources:
            return ("resource", f"resource {resource} is not on {cluster.name}")
        if (alloc_id, res_id) not in includes:
            return ("resource", f"allocation {allocation} does not include {resource}")
        if (alloc_id, user_id) not in members:
            return ("user", f"{names.users[user_id]} is not a member of {allocation}")
        return None

    seen: set[tuple] = set()
    rates_used: dict[int, Rate] = {}
    charges: list[tuple] = []
    for index, job_id, user_id, alloc_id, res_id, raw, charged_at, started, ended in rows:
        fault = None
        if not checked:
            key = (job_id, res_id, user_id)
            if key in seen:
                fault = (
                    "job_id",
                    f"job {job_id} appears twice in this batch for the same user and resource",
                )
            seen.add(key)
            fault = fault or name_fault(alloc_id, res_id, user_id)
            if fault is None:
                raw, fault = _input_fault(raw, charged_at, started, ended)
        elif (alloc_id, res_id) not in usable or (alloc_id, user_id) not in members:
            fault = name_fault(alloc_id, res_id, user_id)
        if fault is None:
            rate = rates.rate_at(res_id, charged_at)
            if rate is None:
                fault = (
                    "charged_at",
                    f"no rate for {names.resources[res_id].name} on {cluster.name} at "
                    f"{charged_at.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC",
                )
            else:
                su = su_for(raw, rate.su_per_unit_hour)
                # Caught here, the record is reported with its index; caught by the
                # database, it would be a bare DataError on PostgreSQL and silently
                # rounded on SQLite.
                if su >= SU_LIMIT:
                    fault = ("raw_unit_seconds", f"the charge of {su} SUs is too large to be real")
        if fault is not None:
            errors.append({"index": index, "field": fault[0], "message": fault[1]})
            continue
        rates_used[rate.id] = rate
        charges.append(
            (index, job_id, user_id, alloc_id, res_id, raw, rate.id, su, charged_at, started, ended)
        )
    # Bad records are not raised yet: conflicting duplicates, found below, must be
    # reported with them, so one rejection lists every bad record.

    # A rejected batch's stage goes with the rollback of this function's transaction.
    store = store_for(cluster)
    store.stage(charges)
    # A job's usage settles its open hold, which may sit on the same allocation or not.
    open_holds = store.open_holds()
    # Locks, in the module's order. The cluster first: the usage key does not name the
    # allocation, so two batches charging the same job to different allocations would
    # never meet on an allocation lock and the second would hit the unique constraint.
    # A cluster's importer posts one batch at a time anyway, so this costs nothing real.
    # no_key: batches still queue on it, but inserts that reference the cluster (a
    # hold, whose transaction may hold an allocation lock this batch waits for) do not.
    Cluster.objects.select_for_update(no_key=True).get(pk=cluster.pk)
    # Then the rates charged at: a concurrent rate_correct either waits for this batch
    # (and its re-rating then sees these rows) or committed first (and the values read
    # here are the corrected ones); a concurrent rate_close likewise.
    locked_rates = {
        r.pk: r
        for r in Rate.objects.select_for_update(no_key=True)
        .filter(pk__in=rates_used)
        .order_by("pk")
    }
    # Then every allocation the batch charges or settles a hold on, in id order: a
    # concurrent batch with the same jobs waits here, then sees them as duplicates.
    lock_ids = set(names.allocations) | {h.allocation_id for h in open_holds}
    list(Allocation.objects.select_for_update().filter(pk__in=lock_ids).order_by("pk"))
    changed = {
        pk
        for pk, rate in locked_rates.items()
        if (rate.su_per_unit_hour, rate.end)
        != (rates_used[pk].su_per_unit_hour, rates_used[pk].end)
    }
    if changed:
        charges = _recharged(charges, changed, locked_rates, names, errors)
        store.stage(charges)

    known = store.known()
    repeated, others = known
    duplicates = len(repeated)
    corrections: list[UsageAdjustment] = []
    by_index = {c[0]: c for c in charges} if others else {}
    for index, state in sorted(others.items()):
        _, job_id, user_id, alloc_id, _, raw, rate_id, su, *_ = by_index[index]
        if state.raw == raw or state.refunded:
            # The same report again (a retry, an overlapping window), or a refunded
            # job, which stays refunded whatever is reported later.
            duplicates += 1
        elif state.allocation_id != alloc_id:
            errors.append(
                {
                    "index": index,
                    "field": "allocation",
                    "message": f"job {job_id} was charged to another allocation; "
                    "a correction cannot move it",
                }
            )
        else:
            # Correction policy: the latest report of a job is the truth. The original
            # charge stays; an adjustment brings the job's net charge to the new amount.
            corrections.append(
                UsageAdjustment(
                    usage_id=state.pk,
                    allocation_id=state.allocation_id,
                    user_id=user_id,
                    kind=UsageAdjustment.Kind.CORRECTION,
                    su_delta=su - state.net,
                    raw_unit_seconds=raw,
                    rate_id=rate_id,
                    reason=f"Importer reported {raw} unit-seconds instead of {state.raw}",
                )
            )
    if errors:
        raise BatchRejected(sorted(errors, key=lambda e: e["index"]))
    inserted, charged_jobs = store.insert(known, {h.job_id for h in open_holds})
    store.close()
    UsageAdjustment.objects.bulk_create(corrections)

    per_allocation: dict[int, Decimal] = defaultdict(Decimal)
    per_member: dict[tuple[int, int], Decimal] = defaultdict(Decimal)
    for (alloc_id, user_id), (_, su) in inserted.items():
        per_allocation[alloc_id] += su
        per_member[(alloc_id, user_id)] += su
    for c in corrections:
        per_allocation[c.allocation_id] += c.su_delta
        per_member[(c.allocation_id, c.user_id)] += c.su_delta
    add_to_used(per_allocation, per_member)
    # The daily rollups: store.insert added the new charges to theirs, under this
    # batch's allocation locks; corrections are recomputed on their job's day after
    # commit. Records that repeat a charge change nothing.
    rollups_touched(rollup_keys_for(corrections))
    close_holds([h for h in open_holds if h.job_id in charged_jobs], state=Hold.State.SETTLED)
    return UsageBatchResult(
        created=sum(n for n, _ in inserted.values()),
        duplicates=duplicates,
        corrected=len(corrections),
        su_charged=sum(per_allocation.values(), Decimal(0)),
    )


def _recharged(charges, changed: set[int], locked_rates: dict[int, Rate], names, errors):
    """The charges again at rates corrected or closed since they were read (a concurrent
    rate_correct or rate_close committed before this batch took the rates' locks)."""
    result = []
    for charge in charges:
        index, job_id, user_id, alloc_id, res_id, raw, rate_id, su, charged_at, *times = charge
        if rate_id in changed:
            rate = locked_rates[rate_id]
            if rate.end is not None and charged_at >= rate.end:
                errors.append(
                    {
                        "index": index,
                        "field": "charged_at",
                        "message": f"the rate window for {names.resources[res_id].name} was "
                        "closed meanwhile",
                    }
                )
                continue
            su = su_for(raw, rate.su_per_unit_hour)
        result.append(
            (index, job_id, user_id, alloc_id, res_id, raw, rate_id, su, charged_at, *times)
        )
    return result


def usage_record(*, cluster: Cluster, record: UsageInput) -> UsageBatchResult:
    """Records one job's usage: a batch of one, so there is one charging path."""
    return usage_record_batch(cluster=cluster, records=[record])


# --- scheduler sync ------------------------------------------------------------------


def sync_report_create(
    *,
    token: ApiToken,
    mode: str,
    succeeded: bool,
    drift: list[dict],
    applied: list[str],
    error: str = "",
    client_version: str = "",
) -> SyncReport:
    """Records what one run of client/su_sync.py found and did on the token's cluster.

    Append-only and written by one insert, so it needs no lock."""
    error = (error or "").strip()
    if mode not in SyncReport.Mode.values:
        raise ValidationError({"mode": f"{mode!r} is not a sync mode."})
    if succeeded and error:
        raise ValidationError({"error": "A successful run reports no error."})
    if not succeeded and not error:
        raise ValidationError({"error": "Say what failed."})
    if mode == SyncReport.Mode.DRY_RUN and applied:
        raise ValidationError({"applied": "A dry run applies nothing."})
    report = SyncReport(
        cluster=token.cluster,
        token=token,
        mode=mode,
        succeeded=succeeded,
        drift=drift,
        drift_count=len(drift),
        applied=applied,
        error=error,
        client_version=client_version,
    )
    report.full_clean()
    report.save()
    return report


# --- review: several approvals, cluster capacity ------------------------------------------


@transaction.atomic
def change_requests_approve_several(
    *, actor: User, requests: Sequence[ChangeRequest]
) -> list[AllocationChange]:
    """Approves each request as asked, all or nothing: the first refusal undoes the
    approvals before it and is raised naming the request it refused."""
    if not requests:
        raise ValidationError({"requests": "Choose at least one request."})
    # The lock order: allocations in ascending id order, so a concurrent decision on
    # one of these allocations queues instead of deadlocking with this batch.
    ordered = sorted(requests, key=lambda r: (r.allocation_id, r.pk))
    changes = []
    for request in ordered:
        try:
            changes.append(change_request_approve(actor=actor, request=request))
        except (ValidationError, PermissionDenied) as refusal:
            why = "; ".join(getattr(refusal, "messages", None) or [str(refusal)])
            raise ValidationError(
                f"Nothing was approved: the request for {request.allocation.name} on "
                f"{request.allocation.cluster.name} was refused: {why}",
                code="approval_refused",
            ) from refusal
    return changes


@transaction.atomic
def cluster_set_capacity(
    *, actor: User | None, cluster: Cluster, su_capacity_per_month, reason: str
) -> ClusterCapacityChange:
    """Sets (or with an empty value clears) what the cluster can give out in a month,
    recording who changed it, from what and why."""
    if actor is not None:
        _require_cluster_admin(actor, cluster)
    value = None
    if su_capacity_per_month not in (None, ""):
        value = _su(su_capacity_per_month, "su_capacity_per_month")
        if value <= 0:
            raise ValidationError(
                {
                    "su_capacity_per_month": "A capacity must be more than 0 SUs; "
                    "leave it empty for none."
                }
            )
    reason = _require_reason(reason, "change the capacity")
    # Lock: two admins changing it at once must leave a history whose old values chain.
    locked = Cluster.objects.select_for_update(no_key=True).get(pk=cluster.pk)
    if locked.su_capacity_per_month == value:
        raise ValidationError({"su_capacity_per_month": "The capacity is already this."})
    change = ClusterCapacityChange.objects.create(
        cluster=locked,
        old_su_capacity_per_month=locked.su_capacity_per_month,
        new_su_capacity_per_month=value,
        actor=actor,
        reason=reason,
    )
    locked.su_capacity_per_month = value
    locked.save(update_fields=["su_capacity_per_month"])
    cluster.su_capacity_per_month = value
    return change
