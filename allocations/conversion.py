"""The one rule that turns raw usage into SUs.

    su = round_half_even(raw_unit_seconds * su_per_unit_hour / 3600, SU_PLACES)

Rounding happens once per usage record, never on sums, so a balance is exactly the
sum of the charges a member can see. Half-even (banker's rounding) keeps millions of
half-way cases from drifting the total up.
"""

from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from functools import cache

SU_DIGITS, SU_PLACES = 20, 4
RATE_DIGITS, RATE_PLACES = 20, 6
SU_QUANTUM = Decimal(1).scaleb(-SU_PLACES)
# The smallest amount too large for an SU column (NUMERIC(SU_DIGITS, SU_PLACES)).
SU_LIMIT = Decimal(10) ** (SU_DIGITS - SU_PLACES)
SECONDS_PER_HOUR = Decimal(3600)

# Wide enough that no intermediate product is ever rounded before the final step.
_CONTEXT = Context(prec=60, rounding=ROUND_HALF_EVEN)


def su_for(raw_unit_seconds: Decimal, su_per_unit_hour: Decimal) -> Decimal:
    exact = _CONTEXT.divide(_CONTEXT.multiply(raw_unit_seconds, su_per_unit_hour), SECONDS_PER_HOUR)
    return exact.quantize(SU_QUANTUM, rounding=ROUND_HALF_EVEN, context=_CONTEXT)


def parse_decimal(
    value, *, field: str, places: int = SU_PLACES, digits: int = SU_DIGITS
) -> Decimal:
    """Parses an amount given as text, int or Decimal; refuses floats, NaN, Infinity,
    and more places or digits than the database keeps (which would round silently)."""
    from django.core.exceptions import ValidationError

    if isinstance(value, float):
        raise ValidationError({field: "Give SU amounts as decimal strings, not floating point."})
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValidationError({field: f"{value!r} is not a number."}) from None
    if not amount.is_finite():
        raise ValidationError({field: "The amount must be a finite number."})
    # copy_abs, not abs(): abs() rounds to the default context and overflows on "1e999999".
    if amount.copy_abs() >= _limit(digits, places):
        raise ValidationError({field: "The amount is too large."})
    # Most amounts are written with no more places than allowed; only the others
    # ("1.5000" is fine, "1.5001" is not) need the comparison with their quantized value.
    if amount.as_tuple().exponent < -places and amount != amount.quantize(
        Decimal(1).scaleb(-places), context=_CONTEXT
    ):
        raise ValidationError({field: f"Give at most {places} decimal places."})
    return amount + 0  # normalises -0 to 0


@cache
def _limit(digits: int, places: int) -> Decimal:
    return Decimal(10) ** (digits - places)


def parse_su(value, *, field: str = "amount") -> Decimal:
    return parse_decimal(value, field=field)


def parse_rate(value, *, field: str = "su_per_unit_hour") -> Decimal:
    return parse_decimal(value, field=field, places=RATE_PLACES, digits=RATE_DIGITS)
