"""Recomputes maintained totals from the records they summarise.

The totals on Allocation and Membership are updated in the same transaction as the
records, so they should never drift; this is the proof, run by `verify_ledger`:
- su_budget = sum of the allocation's diffs' deltas = the latest diff's budget;
- su_used = usage charges + their adjustments (refunds, re-rating, corrections);
- su_held = open holds;
per allocation, and per member for su_used and su_held.
"""

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import DecimalField, OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from allocations.conversion import SU_DIGITS, SU_PLACES, SU_QUANTUM
from allocations.models import (
    Allocation,
    AllocationChange,
    Hold,
    Membership,
    Usage,
    UsageAdjustment,
)

_SU = DecimalField(max_digits=SU_DIGITS, decimal_places=SU_PLACES)
_ZERO = Value(Decimal(0), output_field=_SU)


@dataclass(frozen=True)
class Drift:
    what: str
    code: str
    field: str
    stored: Decimal
    recomputed: Decimal

    def __str__(self) -> str:
        # SQLite hands sums back unscaled; show both at the ledger's scale.
        stored, recomputed = (
            Decimal(v).quantize(SU_QUANTUM) for v in (self.stored, self.recomputed)
        )
        return f"{self.what} {self.code}: {self.field} is {stored}, records say {recomputed}"


def _sum_of(queryset, field: str, **outer):
    """A correlated subquery: sum(field) over queryset rows matching the outer row."""
    return Coalesce(
        Subquery(
            queryset.filter(**{k: OuterRef(v) for k, v in outer.items()})
            .order_by()
            .values(*outer)
            .annotate(total=Sum(field))
            .values("total")
        ),
        _ZERO,
        output_field=_SU,
    )


def _latest_budget():
    return Subquery(
        AllocationChange.objects.filter(allocation=OuterRef("pk"))
        .order_by("-created", "-id")
        .values("su_budget")[:1]
    )


_OPEN_HOLDS = Hold.objects.filter(state=Hold.State.OPEN)


def ledger_drift() -> list[Drift]:
    drifts: list[Drift] = []

    def compare(what, code, field, stored, recomputed):
        # SQLite sums NUMERIC columns in floating point; at the ledger's scale the
        # sum is exact again, so compare there (PostgreSQL sums exactly anyway).
        if recomputed is not None and stored != Decimal(recomputed).quantize(SU_QUANTUM):
            drifts.append(Drift(what, str(code), field, stored, recomputed))

    allocations = Allocation.objects.annotate(
        deltas=_sum_of(AllocationChange.objects, "su_delta", allocation="pk"),
        latest=_latest_budget(),
        charged=_sum_of(Usage.objects, "su_amount", allocation="pk"),
        adjusted=_sum_of(UsageAdjustment.objects, "su_delta", allocation="pk"),
        held=_sum_of(_OPEN_HOLDS, "su_amount", allocation="pk"),
    ).values_list(
        "code", "su_budget", "su_used", "su_held", "deltas", "latest", "charged", "adjusted", "held"
    )
    for (
        code,
        budget,
        used,
        held,
        deltas,
        latest,
        charged,
        adjusted,
        open_held,
    ) in allocations.iterator():
        compare("allocation", code, "su_budget", budget, deltas)
        compare("allocation", code, "su_budget (latest diff)", budget, latest)
        compare("allocation", code, "su_used", used, charged + adjusted)
        compare("allocation", code, "su_held", held, open_held)

    member = {"allocation": "allocation_id", "user": "user_id"}
    memberships = Membership.objects.annotate(
        charged=_sum_of(Usage.objects, "su_amount", **member),
        adjusted=_sum_of(UsageAdjustment.objects, "su_delta", **member),
        held=_sum_of(_OPEN_HOLDS, "su_amount", **member),
    ).values_list("code", "su_used", "su_held", "charged", "adjusted", "held")
    for code, used, held, charged, adjusted, open_held in memberships.iterator():
        compare("membership", code, "su_used", used, charged + adjusted)
        compare("membership", code, "su_held", held, open_held)
    return drifts
