"""Corrections to charges already made: refunds and re-rating after a rate correction.

The original usage row is never edited; each correction is a UsageAdjustment whose
su_delta moves the maintained totals, in the same transaction, under the allocation's
row lock (the lock order of services.py: allocations in id order, then memberships).
"""

from collections import defaultdict
from decimal import Decimal

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from accounts.models import User
from allocations.conversion import parse_rate, su_for
from allocations.models import (
    Allocation,
    Cluster,
    Membership,
    Rate,
    RateCorrection,
    Usage,
    UsageAdjustment,
)
from allocations.selectors import user_administers_cluster

RERATE_CHUNK = 2000


def add_to_used(
    per_allocation: dict[int, Decimal], per_member: dict[tuple[int, int], Decimal]
) -> None:
    """Moves maintained su_used totals: one UPDATE per allocation and per member.
    per_member is keyed by (allocation_id, user_id). The caller holds the locks."""
    for allocation_id, amount in per_allocation.items():
        if amount:
            Allocation.objects.filter(pk=allocation_id).update(su_used=F("su_used") + amount)
    for (allocation_id, user_id), amount in per_member.items():
        if amount:
            Membership.objects.filter(allocation_id=allocation_id, user_id=user_id).update(
                su_used=F("su_used") + amount
            )


def add_charges_to_used(charges) -> None:
    """Adds rows with allocation_id, user_id and an amount (su_amount or su_delta) to
    the maintained totals."""
    per_allocation: dict[int, Decimal] = defaultdict(Decimal)
    per_member: dict[tuple[int, int], Decimal] = defaultdict(Decimal)
    for row in charges:
        amount = row.su_delta if isinstance(row, UsageAdjustment) else row.su_amount
        per_allocation[row.allocation_id] += amount
        per_member[(row.allocation_id, row.user_id)] += amount
    add_to_used(per_allocation, per_member)


def _lock_allocations(ids) -> None:
    list(Allocation.objects.select_for_update().filter(pk__in=set(ids)).order_by("pk"))


def _net_charges(usage_ids) -> dict[int, Decimal]:
    """Each usage record's charge as it stands: su_amount plus its adjustments."""
    net = dict(Usage.objects.filter(pk__in=usage_ids).values_list("pk", "su_amount"))
    adjusted = (
        UsageAdjustment.objects.filter(usage_id__in=usage_ids)
        .values("usage_id")
        .annotate(total=Sum("su_delta"))
        .values_list("usage_id", "total")
    )
    for usage_id, total in adjusted:
        net[usage_id] += total
    return net


@transaction.atomic
def usage_refund(
    *, actor: User, cluster: Cluster, job_id: str, reason: str, username: str | None = None
) -> list[UsageAdjustment]:
    """Refunds every charge of a job (all its resources, or one user's) in full, e.g.
    after a node failure or preemption. A job is refunded once."""
    if not user_administers_cluster(user=actor, cluster=cluster):
        raise PermissionDenied(f"Only admins of {cluster.name} may refund jobs.")
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "Say why the job is refunded."})
    rows = Usage.objects.filter(cluster=cluster, job_id=job_id)
    if username:
        rows = rows.filter(user__username=username)
    rows = list(rows.order_by("pk"))
    if not rows:
        raise ValidationError({"job_id": f"No usage of job {job_id} on {cluster.name}."})
    _lock_allocations(r.allocation_id for r in rows)
    if UsageAdjustment.objects.filter(usage__in=rows, kind=UsageAdjustment.Kind.REFUND).exists():
        raise ValidationError(
            {"job_id": f"Job {job_id} has already been refunded."}, code="refunded"
        )
    net = _net_charges([r.pk for r in rows])
    adjustments = [
        UsageAdjustment(
            usage=r,
            allocation_id=r.allocation_id,
            user_id=r.user_id,
            kind=UsageAdjustment.Kind.REFUND,
            su_delta=-net[r.pk],
            actor=actor,
            reason=reason,
        )
        for r in rows
    ]
    try:
        with transaction.atomic():
            UsageAdjustment.objects.bulk_create(adjustments)
    except IntegrityError:
        # A concurrent refund of the same job on another allocation got there first.
        raise ValidationError({"job_id": f"Job {job_id} has already been refunded."}) from None
    add_charges_to_used(adjustments)
    return adjustments


@transaction.atomic
def rate_correct(
    *, actor: User | None, rate: Rate, su_per_unit_hour, reason: str
) -> RateCorrection:
    """Corrects a window's rate after the fact. The usage charged at it is re-rated by
    a background task (rerate_usage), as adjustments: the original charges stay."""
    rate = Rate.objects.select_for_update().select_related("resource__cluster").get(pk=rate.pk)
    if actor is not None and not user_administers_cluster(
        user=actor, cluster=rate.resource.cluster
    ):
        raise PermissionDenied(
            f"Only admins of {rate.resource.cluster.name} may correct its rates."
        )
    value = parse_rate(su_per_unit_hour)
    if value < 0:
        raise ValidationError({"su_per_unit_hour": "A rate cannot be negative."})
    if value == rate.su_per_unit_hour:
        raise ValidationError({"su_per_unit_hour": "The rate already has this value."})
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "Say why the rate is corrected."})
    correction = RateCorrection.objects.create(
        rate=rate,
        old_su_per_unit_hour=rate.su_per_unit_hour,
        new_su_per_unit_hour=value,
        old_end=rate.end,
        new_end=rate.end,
        actor=actor,
        reason=reason,
    )
    rate.su_per_unit_hour = value
    rate.save(update_fields=["su_per_unit_hour"])
    from allocations.tasks import rerate_usage_task

    rerate_usage_task.delay_on_commit(correction.pk)
    return correction


def rerate_usage(*, correction: RateCorrection) -> int:
    """Brings every charge made at the corrected rate to what the rate now says.

    Idempotent and resumable: each chunk commits on its own, and a charge already at
    its target gets no adjustment, so a re-run after a crash adds only what is missing.
    Refunded jobs stay refunded. Returns the number of adjustments written.
    """
    rate = Rate.objects.get(pk=correction.rate_id)
    written = 0
    last_pk = 0
    while True:
        with transaction.atomic():
            chunk = list(
                Usage.objects.filter(rate=rate, pk__gt=last_pk)
                .order_by("pk")
                .values_list("pk", "allocation_id", "user_id", "raw_unit_seconds")[:RERATE_CHUNK]
            )
            if not chunk:
                break
            last_pk = chunk[-1][0]
            _lock_allocations(row[1] for row in chunk)
            ids = [row[0] for row in chunk]
            net = _net_charges(ids)
            refunded = set(
                UsageAdjustment.objects.filter(
                    usage_id__in=ids, kind=UsageAdjustment.Kind.REFUND
                ).values_list("usage_id", flat=True)
            )
            adjustments = []
            for pk, allocation_id, user_id, raw in chunk:
                if pk in refunded:
                    continue
                delta = su_for(raw, rate.su_per_unit_hour) - net[pk]
                if delta:
                    adjustments.append(
                        UsageAdjustment(
                            usage_id=pk,
                            allocation_id=allocation_id,
                            user_id=user_id,
                            kind=UsageAdjustment.Kind.RERATE,
                            su_delta=delta,
                            raw_unit_seconds=raw,
                            rate=rate,
                            actor=correction.actor,
                            reason=f"Rate corrected: {correction.reason}",
                        )
                    )
            UsageAdjustment.objects.bulk_create(adjustments)
            add_charges_to_used(adjustments)
            written += len(adjustments)
    RateCorrection.objects.filter(pk=correction.pk).update(rerated_at=timezone.now())
    return written
