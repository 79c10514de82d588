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

GrpTRESMins is compared by Slurm with the association's accumulated usage, which the portal
does not know; the client therefore sets GrpTRESMins=billing=<Slurm's usage now + headroom>
(README, "Pushing limits to Slurm"). Less than one billing-minute left counts as exhausted.
"""

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Context, Decimal

from allocations.admission import Reason, allocation_refusal, membership_refusal
from allocations.models import Allocation, Cluster, Membership

MINUTES_PER_HOUR = Decimal(60)
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
    allocation: object  # the allocation's code (UUID)
    description: str
    status: str
    may_run: bool
    reason: str | None
    remaining_su: Decimal
    billing_minutes: int
    grp_jobs: int | None
    users: list[UserLimits]


@dataclass(frozen=True)
class DesiredState:
    cluster: str
    generated_at: dt.datetime
    tres: str
    su_per_billing_unit_hour: Decimal
    accounts: list[AccountLimits]


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
    at: dt.datetime,
) -> DesiredState:
    """Pure: from rows already read (selectors.desired_state_for) to limits."""
    rate = cluster.su_per_billing_unit_hour
    return DesiredState(
        cluster=cluster.name,
        generated_at=at,
        tres="billing",
        su_per_billing_unit_hour=rate,
        accounts=[
            account_limits(a, memberships.get(a.pk, []), rate=rate, at=at) for a in allocations
        ],
    )
