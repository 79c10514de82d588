"""What Slurm should enforce for one cluster: the portal's budgets as Slurm association limits.

The portal is the source of truth; client/su_sync.py reads this desired state and makes
Slurm's associations match it. Every allocation is a Slurm account (its `name`), every
membership a user association under it. Three things are published for each:

- may_run, and the reason from the charging rule (admission.py) when not;
- GrpJobs: 0 when the level itself refuses (frozen, removed, outside its dates, out of
  SUs), none otherwise. A block goes on the level that refuses: freezing a project blocks
  its accounts, not each member, and lifting it restores every member's own limits;
- billing_minutes: the headroom of GrpTRESMins on Slurm's `billing` TRES, converted from
  the remaining SUs at the cluster's su_per_billing_unit_hour:

      billing_minutes = floor(max(remaining SUs, 0) x 60 / su_per_billing_unit_hour)

  always rounded down, so Slurm never allows more than the portal would. For an account,
  remaining = budget - used - held; for a member with a cap, cap - used - held (the
  account's own limit already holds the pool); a member without a cap has no limit of
  their own (None).

Slurm must count billing in the same units: billing_weights gives, for each TRES mapping of
the cluster, the TRESBillingWeights entry that makes a job's billing its SUs per hour divided by
su_per_billing_unit_hour at the rates in force (rounded up to 6 places: Slurm then counts a
little more, never less). It is advice for slurm.conf; the portal cannot see what Slurm has.

GrpTRESMins is compared by Slurm with the association's accumulated usage, which the portal
does not know; the client therefore sets GrpTRESMins=billing=<Slurm's usage now + headroom>
(README, "Pushing limits to Slurm"). Less than one billing-minute left counts as exhausted.
"""

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal

from allocations.admission import Reason, allocation_refusal, membership_refusal
from allocations.models import Allocation, Cluster, Membership, Rate, TresMapping

MINUTES_PER_HOUR = Decimal(60)
WEIGHT_QUANTUM = Decimal("0.000001")
# Wide enough that nothing is rounded before the one floor.
_EXACT = Context(prec=60, rounding=ROUND_FLOOR)


def billing_minutes(su: Decimal, su_per_billing_unit_hour: Decimal) -> int:
    """Whole billing-minutes `su` SUs buy, rounded down; none for a zero or negative balance."""
    if su <= 0:
        return 0
    exact = _EXACT.divide(_EXACT.multiply(su, MINUTES_PER_HOUR), su_per_billing_unit_hour)
    return int(exact.to_integral_value(rounding=ROUND_FLOOR, context=_EXACT))


@dataclass(frozen=True)
class UserLimits:
    user: str
    status: str
    may_run: bool
    reason: str | None
    cap: Decimal | None
    remaining_su: Decimal | None  # under the cap; None without one
    billing_minutes: int | None  # None: no limit of the member's own
    grp_jobs: int | None  # 0 blocks; None: no limit


@dataclass(frozen=True)
class AccountLimits:
    account: str
    allocation: uuid.UUID  # the allocation's code
    description: str
    status: str
    may_run: bool
    reason: str | None
    remaining_su: Decimal
    billing_minutes: int
    grp_jobs: int | None
    users: list[UserLimits]


@dataclass(frozen=True)
class BillingWeight:
    partition: str  # blank: every partition
    tres: str
    resource: str
    weight: Decimal | None  # None: no rate is in force for the resource


@dataclass(frozen=True)
class DesiredState:
    cluster: str
    generated_at: dt.datetime
    tres: str
    su_per_billing_unit_hour: Decimal
    billing_weights: list[BillingWeight]
    accounts: list[AccountLimits]


def billing_weights(
    mappings: Iterable[TresMapping], rates: Mapping[int, Rate], su_per_billing_unit_hour: Decimal
) -> list[BillingWeight]:
    """weight = SU per unit-hour x TRES scale / su_per_billing_unit_hour, rounded up."""
    weights = []
    for mapping in mappings:
        rate = rates.get(mapping.resource_id)
        weight = None
        if rate is not None:
            exact = _EXACT.divide(
                _EXACT.multiply(rate.su_per_unit_hour, mapping.scale), su_per_billing_unit_hour
            )
            weight = exact.quantize(WEIGHT_QUANTUM, rounding=ROUND_CEILING, context=_EXACT)
        weights.append(
            BillingWeight(mapping.partition, mapping.tres, mapping.resource.name, weight)
        )
    return weights


def _user_limits(
    membership: Membership, *, account_refusal: Reason | None, rate: Decimal, at: dt.datetime
) -> UserLimits:
    own = membership_refusal(membership=membership, at=at)
    remaining = minutes = None
    if membership.su_cap is not None:
        remaining = membership.su_cap - membership.su_used - membership.su_held
        minutes = billing_minutes(remaining, rate)
        if own is None and minutes == 0:
            own = Reason.MEMBER_CAP_EXHAUSTED
    reason = account_refusal or own
    return UserLimits(
        user=membership.user.username,
        status=membership.status,
        may_run=reason is None,
        reason=reason and reason.value,
        cap=membership.su_cap,
        remaining_su=remaining,
        billing_minutes=minutes,
        grp_jobs=0 if own else None,
    )


def account_limits(
    allocation: Allocation, memberships: Iterable[Membership], *, rate: Decimal, at: dt.datetime
) -> AccountLimits:
    refusal = allocation_refusal(
        project_status=allocation.project.status, allocation=allocation, at=at
    )
    remaining = allocation.su_remaining
    minutes = billing_minutes(remaining, rate)
    if refusal is None and minutes == 0:
        refusal = Reason.ALLOCATION_EXHAUSTED
    return AccountLimits(
        account=allocation.name,
        allocation=allocation.code,
        description=allocation.project.title,
        status=allocation.status,
        may_run=refusal is None,
        reason=refusal and refusal.value,
        remaining_su=remaining,
        billing_minutes=minutes,
        grp_jobs=0 if refusal else None,
        users=[_user_limits(m, account_refusal=refusal, rate=rate, at=at) for m in memberships],
    )


def desired_state(
    cluster: Cluster,
    allocations: Iterable[Allocation],
    memberships: Mapping[int, list[Membership]],
    *,
    mappings: Iterable[TresMapping],
    rates: Mapping[int, Rate],
    at: dt.datetime,
) -> DesiredState:
    """Pure: from rows already read (selectors.desired_state_for) to limits."""
    rate = cluster.su_per_billing_unit_hour
    return DesiredState(
        cluster=cluster.name,
        generated_at=at,
        tres="billing",
        su_per_billing_unit_hour=rate,
        billing_weights=billing_weights(mappings, rates, rate),
        accounts=[
            account_limits(a, memberships.get(a.pk, []), rate=rate, at=at) for a in allocations
        ],
    )
