"""Corrections to charges already made: refunds and re-rating after a rate correction.

The original usage row is never edited; each correction is a UsageAdjustment whose
su_delta moves the maintained totals, in the same transaction, under the allocation's
row lock (the lock order of services.py: allocations in id order, then memberships).
"""

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Round
from django.utils import timezone

from accounts.models import User
from allocations.conversion import SU_PLACES, parse_rate, su_for
from allocations.models import (
    Allocation,
    Cluster,
    Membership,
    Rate,
    RateCorrection,
    Usage,
    UsageAdjustment,
)
from allocations.rollups import rollup_keys_for, rollups_touched
from allocations.selectors import user_administers_cluster

RERATE_CHUNK = 2000


def moved(field: str, amount: Decimal) -> Round:
    """field + amount, rounded to the ledger's scale. A no-op on PostgreSQL's NUMERIC;
    SQLite keeps these columns as binary floats, where amounts that cancel out
    (3.2076 + 2.3407 - 3.2076 - 2.3407) would leave -4.4e-16 and break the >= 0 checks."""
    return Round(F(field) + amount, SU_PLACES)


def add_to_used(
    per_allocation: dict[int, Decimal], per_member: dict[tuple[int, int], Decimal]
) -> None:
    """Moves maintained su_used totals: each allocation's and each member's once.
    per_member is keyed by (allocation_id, user_id). The caller holds the allocations'
    locks, and with them the right to move their members' totals."""
    per_allocation = {k: v for k, v in per_allocation.items() if v}
    per_member = {k: v for k, v in per_member.items() if v}
    if connection.vendor == "postgresql":
        # One statement per table, however many allocations and members a batch touches.
        # NUMERIC sums are exact, so no rounding is needed (see moved() for SQLite).
        with connection.cursor() as cursor:
            if per_allocation:
                cursor.execute(
                    "UPDATE allocations_allocation AS a SET su_used = a.su_used + v.amount "
                    "FROM unnest(%s::bigint[], %s::numeric[]) AS v(id, amount) WHERE a.id = v.id",
                    [list(per_allocation), list(per_allocation.values())],
                )
            if per_member:
                cursor.execute(
                    "UPDATE allocations_membership AS m SET su_used = m.su_used + v.amount "
                    "FROM unnest(%s::bigint[], %s::bigint[], %s::numeric[]) "
                    "AS v(allocation_id, user_id, amount) "
                    "WHERE m.allocation_id = v.allocation_id AND m.user_id = v.user_id",
                    [
                        [a for a, _ in per_member],
                        [u for _, u in per_member],
                        list(per_member.values()),
                    ],
                )
        return
    for allocation_id, amount in per_allocation.items():
        if amount:
            Allocation.objects.filter(pk=allocation_id).update(su_used=moved("su_used", amount))
    for (allocation_id, user_id), amount in per_member.items():
        if amount:
            Membership.objects.filter(allocation_id=allocation_id, user_id=user_id).update(
                su_used=moved("su_used", amount)
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


@dataclass(frozen=True)
class ChargeState:
    """Where a usage record's charge stands after its adjustments."""

    pk: int
    allocation_id: int
    user_id: int
    raw: Decimal  # as last reported: a correction's raw amount, else the original
    rate_id: int  # the rate the charge now stands on
    net: Decimal  # su_amount plus every adjustment
    refunded: bool


def charge_states(usage: QuerySet[Usage]) -> dict[int, ChargeState]:
    """The charge state of each usage row of the queryset, in two queries."""
    rows = list(
        usage.values_list(
            "pk", "allocation_id", "user_id", "raw_unit_seconds", "rate_id", "su_amount"
        )
    )
    state = {pk: [a, u, raw, rate, net, False] for pk, a, u, raw, rate, net in rows}
    adjustments = UsageAdjustment.objects.filter(usage_id__in=state).order_by("usage_id", "id")
    for usage_id, kind, delta, raw, rate_id in adjustments.values_list(
        "usage_id", "kind", "su_delta", "raw_unit_seconds", "rate_id"
    ):
        entry = state[usage_id]
        entry[4] += delta
        if raw is not None:
            entry[2], entry[3] = raw, rate_id
        if kind == UsageAdjustment.Kind.REFUND:
            entry[5] = True
    return {pk: ChargeState(pk, *entry) for pk, entry in state.items()}


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
    # With what the API shows of each refund, so the answer costs no query per row.
    rows = Usage.objects.filter(cluster=cluster, job_id=job_id).select_related("resource", "user")
    if username:
        rows = rows.filter(user__username=username)
    rows = list(rows.order_by("pk"))
    if not rows:
        raise ValidationError({"job_id": f"No usage of job {job_id} on {cluster.name}."})
    _lock_allocations(r.allocation_id for r in rows)
    if UsageAdjustment.objects.filter(usage__in=rows, kind=UsageAdjustment.Kind.REFUND).exists():
        raise ValidationError(
            {"job_id": ValidationError(f"Job {job_id} has already been refunded.", code="refunded")}
        )
    states = charge_states(Usage.objects.filter(pk__in=[r.pk for r in rows]))
    adjustments = [
        UsageAdjustment(
            usage=r,
            allocation_id=r.allocation_id,
            user_id=r.user_id,
            kind=UsageAdjustment.Kind.REFUND,
            su_delta=-states[r.pk].net,
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
        raise ValidationError(
            {"job_id": ValidationError(f"Job {job_id} has already been refunded.", code="refunded")}
        ) from None
    add_charges_to_used(adjustments)
    rollups_touched(rollup_keys_for(rows))
    return adjustments


@transaction.atomic
def rate_correct(
    *, actor: User | None, rate: Rate, su_per_unit_hour, reason: str
) -> RateCorrection:
    """Corrects a window's rate after the fact. The usage charged at it is re-rated by
    a background task (rerate_usage), as adjustments: the original charges stay."""
    # Lock the rate (two corrections at once must each record the value they replace), but
    # not the joined cluster row, which every usage and hold insert of the cluster needs.
    rate = (
        Rate.objects.select_for_update(of=("self",))
        .select_related("resource__cluster")
        .get(pk=rate.pk)
    )
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
            # The rate before the allocations (services.py's lock order): a usage batch takes
            # them in that order, and this chunk's inserts need a key-share lock on the rate.
            rate = Rate.objects.select_for_update(of=("self",)).get(pk=rate.pk)
            # Rows charged at this rate, or corrected onto it by a later report; a row
            # corrected onto another rate since is that rate's to re-rate.
            chunk = list(
                Usage.objects.filter(Q(rate=rate) | Q(adjustments__rate=rate), pk__gt=last_pk)
                .order_by("pk")
                .values_list("pk", flat=True)
                .distinct()[:RERATE_CHUNK]
            )
            if not chunk:
                break
            last_pk = chunk[-1]
            states = charge_states(Usage.objects.filter(pk__in=chunk))
            _lock_allocations(st.allocation_id for st in states.values())
            adjustments = []
            for st in states.values():
                if st.refunded or st.rate_id != rate.pk:
                    continue
                delta = su_for(st.raw, rate.su_per_unit_hour) - st.net
                if delta:
                    adjustments.append(
                        UsageAdjustment(
                            usage_id=st.pk,
                            allocation_id=st.allocation_id,
                            user_id=st.user_id,
                            kind=UsageAdjustment.Kind.RERATE,
                            su_delta=delta,
                            raw_unit_seconds=st.raw,
                            rate=rate,
                            actor=correction.actor,
                            reason=f"Rate corrected: {correction.reason}",
                        )
                    )
            UsageAdjustment.objects.bulk_create(adjustments)
            add_charges_to_used(adjustments)
            rollups_touched(rollup_keys_for(adjustments))
            written += len(adjustments)
    RateCorrection.objects.filter(pk=correction.pk).update(rerated_at=timezone.now())
    return written
