"""Scheduled work on allocations: closing what has ended, and warning people in time.

- close_ended: ACTIVE allocations and memberships past their end date become INACTIVE
  through the services (a diff, or a membership change, records each one).
- alerts_send: usage warnings when an allocation's usage reaches a threshold percentage
  of its budget (to its PI and managers) or a member's reaches one of their cap (to the
  member and the PI); end-date warnings ALERT_ENDING_DAYS before an allocation's or a
  membership's end.

Each warning is first claimed by inserting an AlertSent row, whose unique constraints
allow one per crossing, and e-mailed only after that row commits. So running a sweep
twice, or two workers running it at once, sends nothing twice. When usage jumps past
several thresholds between two sweeps, each is recorded and one e-mail names the highest.
"""

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import F
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from accounts.models import User
from allocations import services
from allocations.models import AlertSent, Allocation, Membership, Status
from allocations.selectors import user_administers_cluster, user_manages_project

logger = logging.getLogger("allocations")

MAX_THRESHOLDS = 10


def parse_thresholds(
    text: str, *, field: str = "alert_thresholds", low: int = 1, high: int = 100, unit: str = "%"
) -> tuple[int, ...]:
    """ "75, 90,100" -> (75, 90, 100). Whole numbers from low to high, at most
    MAX_THRESHOLDS of them; anything else is a ValidationError naming the field."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise ValidationError(
                {field: f"{part!r} is not a whole number; give numbers like 75,90,100."}
            )
        value = int(part)
        if not low <= value <= high:
            raise ValidationError({field: f"{value}{unit} is out of range: use {low} to {high}."})
        values.append(value)
    if not values:
        raise ValidationError({field: "Give at least one threshold, e.g. 75,90,100."})
    if len(set(values)) > MAX_THRESHOLDS:
        raise ValidationError({field: f"Give at most {MAX_THRESHOLDS} thresholds."})
    return tuple(sorted(set(values)))


def site_thresholds() -> tuple[int, ...]:
    return parse_thresholds(settings.ALERT_THRESHOLDS, field="ALERT_THRESHOLDS")


def ending_days() -> tuple[int, ...]:
    return parse_thresholds(
        settings.ALERT_ENDING_DAYS, field="ALERT_ENDING_DAYS", high=366, unit=" days"
    )


def thresholds_for(allocation: Allocation) -> tuple[int, ...]:
    if allocation.alert_thresholds:
        return parse_thresholds(allocation.alert_thresholds)
    return site_thresholds()


@transaction.atomic
def allocation_set_alert_thresholds(
    *, actor: User, allocation: Allocation, thresholds: str | None
) -> Allocation:
    """Sets the allocation's usage warning thresholds; empty or None: the site's default."""
    if not (
        user_manages_project(user=actor, project=allocation.project)
        or user_administers_cluster(user=actor, cluster=allocation.cluster)
    ):
        raise PermissionDenied("Only the project's PI or managers may set its alerts.")
    value = ""
    if thresholds not in (None, ""):
        value = ",".join(str(t) for t in parse_thresholds(thresholds))
    Allocation.objects.filter(pk=allocation.pk).update(alert_thresholds=value)
    allocation.alert_thresholds = value
    return allocation


# --- closing what has ended ---------------------------------------------------------------


def close_ended(*, today: dt.date | None = None) -> dict:
    """Closes allocations and memberships whose end date is before today; idempotent."""
    today = today or timezone.now().date()
    closed = {"allocations": 0, "memberships": 0}
    due = Allocation.objects.filter(status=Status.ACTIVE, end__lt=today).order_by("pk")
    for allocation_id in due.values_list("pk", flat=True):
        if services.allocation_expire(allocation_id=allocation_id, today=today):
            closed["allocations"] += 1
    due = Membership.objects.filter(status=Status.ACTIVE, end__lt=today).order_by("pk")
    for membership_id in due.values_list("pk", flat=True):
        if services.membership_expire(membership_id=membership_id, today=today):
            closed["memberships"] += 1
    return closed


# --- warnings -------------------------------------------------------------------------------


def allocation_link(allocation: Allocation) -> str:
    """An absolute link to the allocation's page (the dashboard until that page exists)."""
    try:
        path = reverse("allocations:allocation", kwargs={"code": allocation.code})
    except NoReverseMatch:
        path = reverse("allocations:home")
    return settings.SITE_URL + path


def _addresses(users) -> list[str]:
    return sorted({u.email for u in users if u is not None and u.email})


def _send(template: str, context: dict, recipients: list[str]) -> None:
    if not recipients:
        return
    subject = " ".join(render_to_string(f"email/alerts/{template}_subject.txt", context).split())
    body = render_to_string(f"email/alerts/{template}_body.txt", context)
    try:
        send_mail(subject, body, None, recipients)
    except Exception:
        # The warning is recorded; one that could not be mailed is in the log, not retried.
        logger.exception("could not send the %s alert to %s", template, recipients)


def _claim(rows: list[AlertSent]) -> list[AlertSent]:
    """Inserts the rows that are not there yet and returns those: each in a savepoint,
    so one already claimed by a concurrent sweep is skipped, not fatal."""
    claimed = []
    for row in rows:
        try:
            with transaction.atomic():
                row.save()
        except IntegrityError:
            continue
        claimed.append(row)
    return claimed


@dataclass
class _Pending:
    allocation: Allocation
    membership: Membership | None
    rows: list[AlertSent]


def _percent(used: Decimal, basis: Decimal) -> Decimal:
    return used * 100 / basis


def _usage_candidates(now: dt.datetime) -> list[_Pending]:
    """Usage crossings not yet recorded, found with a few queries for the whole site."""
    today = now.date()
    allocations = list(
        Allocation.objects.filter(
            status=Status.ACTIVE,
            project__status=Status.ACTIVE,
            su_budget__gt=0,
            su_used__gt=0,
            start__lte=today,
        )
        .select_related("project__pi", "cluster")
        .prefetch_related("project__managers")
        .order_by("pk")
    )
    members = list(
        Membership.objects.filter(
            status=Status.ACTIVE,
            su_cap__gt=0,
            su_used__gt=0,
            allocation__status=Status.ACTIVE,
            allocation__project__status=Status.ACTIVE,
        )
        .select_related("user", "allocation__project__pi", "allocation__cluster")
        .order_by("pk")
    )
    sent = defaultdict(set)
    for allocation_id, membership_id, threshold, basis in AlertSent.objects.filter(
        kind=AlertSent.Kind.USAGE,
        allocation_id__in={a.pk for a in allocations} | {m.allocation_id for m in members},
    ).values_list("allocation_id", "membership_id", "threshold", "basis"):
        sent[(allocation_id, membership_id)].add((threshold, Decimal(basis)))

    pending = []
    for allocation in allocations:
        pct = _percent(allocation.su_used, allocation.su_budget)
        basis = allocation.su_budget
        rows = [
            AlertSent(
                allocation=allocation,
                kind=AlertSent.Kind.USAGE,
                threshold=t,
                basis=basis,
                created=now,
            )
            for t in thresholds_for(allocation)
            if pct >= t and (t, basis) not in sent[(allocation.pk, None)]
        ]
        if rows:
            pending.append(_Pending(allocation, None, rows))
    for member in members:
        allocation = member.allocation
        pct = _percent(member.su_used, member.su_cap)
        rows = [
            AlertSent(
                allocation=allocation,
                membership=member,
                kind=AlertSent.Kind.USAGE,
                threshold=t,
                basis=member.su_cap,
                created=now,
            )
            for t in thresholds_for(allocation)
            if pct >= t and (t, member.su_cap) not in sent[(allocation.pk, member.pk)]
        ]
        if rows:
            pending.append(_Pending(allocation, member, rows))
    return pending


def _ending_candidates(now: dt.datetime) -> list[_Pending]:
    today = now.date()
    days = ending_days()
    horizon = today + dt.timedelta(days=max(days))
    allocations = list(
        Allocation.objects.filter(status=Status.ACTIVE, end__gte=today, end__lte=horizon)
        .select_related("project__pi", "cluster")
        .prefetch_related("project__managers")
        .order_by("pk")
    )
    # A member whose own end comes before the allocation's; otherwise the allocation's
    # warning already says it.
    members = list(
        Membership.objects.filter(
            status=Status.ACTIVE,
            allocation__status=Status.ACTIVE,
            end__gte=today,
            end__lte=horizon,
            end__lt=F("allocation__end"),
        )
        .select_related("user", "allocation__project__pi", "allocation__cluster")
        .order_by("pk")
    )
    sent = defaultdict(set)
    for allocation_id, membership_id, threshold, end in AlertSent.objects.filter(
        kind=AlertSent.Kind.ENDING,
        allocation_id__in={a.pk for a in allocations} | {m.allocation_id for m in members},
    ).values_list("allocation_id", "membership_id", "threshold", "end"):
        sent[(allocation_id, membership_id)].add((threshold, end))

    pending = []
    for allocation, member, end in [(a, None, a.end) for a in allocations] + [
        (m.allocation, m, m.end) for m in members
    ]:
        left = (end - today).days
        key = (allocation.pk, member.pk if member else None)
        rows = [
            AlertSent(
                allocation=allocation,
                membership=member,
                kind=AlertSent.Kind.ENDING,
                threshold=d,
                end=end,
                created=now,
            )
            for d in days
            if left <= d and (d, end) not in sent[key]
        ]
        if rows:
            pending.append(_Pending(allocation, member, rows))
    return pending


def _recipients(item: _Pending) -> list[User]:
    project = item.allocation.project
    if item.membership is not None:
        return [item.membership.user, project.pi]
    return [project.pi, *project.managers.all()]


def _context(item: _Pending, claimed: list[AlertSent], today: dt.date) -> dict:
    allocation, member = item.allocation, item.membership
    subject = member or allocation
    context = {
        "allocation": allocation,
        "project": allocation.project,
        "member": member,
        "link": allocation_link(allocation),
        "site_url": settings.SITE_URL,
    }
    if claimed[0].kind == AlertSent.Kind.USAGE:
        highest = max(claimed, key=lambda row: row.threshold)
        basis = highest.basis
        context |= {
            "threshold": highest.threshold,
            "used": subject.su_used,
            "basis": basis,
            "percent": _percent(subject.su_used, basis).quantize(Decimal(1)),
            "left": basis - subject.su_used,
            "over": subject.su_used >= basis,
        }
    else:
        end = claimed[0].end
        context |= {"end": end, "days_left": (end - today).days}
    return context


def _deliver(pending: list[_Pending], now: dt.datetime) -> int:
    mailed = 0
    for item in pending:
        addresses = _addresses(_recipients(item))
        for row in item.rows:
            row.recipients = ", ".join(addresses)
        with transaction.atomic():
            claimed = _claim(item.rows)
            if not claimed:
                continue
            template = "usage" if claimed[0].kind == AlertSent.Kind.USAGE else "ending"
            context = _context(item, claimed, now.date())
            transaction.on_commit(lambda t=template, c=context, a=addresses: _send(t, c, a))
            mailed += 1
    return mailed


def alerts_send(*, now: dt.datetime | None = None) -> dict:
    """Sends the usage and end-date warnings that are due and not yet sent. Returns how
    many e-mails of each kind went out."""
    now = now or timezone.now()
    return {
        "usage": _deliver(_usage_candidates(now), now),
        "ending": _deliver(_ending_candidates(now), now),
    }
