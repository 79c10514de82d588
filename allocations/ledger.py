"""Recomputes maintained totals from the records they summarise.

The totals on Allocation and Membership are updated in the same transaction as the
records, so they should never drift; this is the proof, run by `verify_ledger`.
"""

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import DecimalField, OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from allocations.conversion import SU_DIGITS, SU_PLACES, SU_QUANTUM
from allocations.models import Allocation, AllocationChange, Membership, Usage

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


def _sum_of(model, field: str, **outer):
    return Coalesce(
        Subquery(
            model.objects.filter(**{k: OuterRef(v) for k, v in outer.items()})
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


def ledger_drift() -> list[Drift]:
    drifts: list[Drift] = []
    allocations = Allocation.objects.annotate(
        deltas=_sum_of(AllocationChange, "su_delta", allocation="pk"),
        latest=_latest_budget(),
        usage_total=_sum_of(Usage, "su_amount", allocation="pk"),
    ).values_list("code", "su_budget", "su_used", "deltas", "latest", "usage_total")
    for code, budget, used, deltas, latest, usage_total in allocations.iterator():
        if budget != deltas:
            drifts.append(Drift("allocation", str(code), "su_budget", budget, deltas))
        if latest is not None and budget != latest:
            drifts.append(Drift("allocation", str(code), "su_budget (latest diff)", budget, latest))
        if used != usage_total:
            drifts.append(Drift("allocation", str(code), "su_used", used, usage_total))
    memberships = Membership.objects.annotate(
        usage_total=_sum_of(Usage, "su_amount", allocation="allocation_id", user="user_id")
    ).values_list("code", "su_used", "usage_total")
    for code, used, usage_total in memberships.iterator():
        if used != usage_total:
            drifts.append(Drift("membership", str(code), "su_used", used, usage_total))
    return drifts
