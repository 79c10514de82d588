"""Resource quantities as schedulers write them: Slurm TRES strings and Kubernetes quantities.

Every amount is an exact Decimal; nothing goes through a float.
"""

import re
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow

from .base import ParseError

# Slurm prints sizes with 1024-based suffixes; the unit of a bare number is the megabyte.
_SLURM_SIZE_MB = {
    "": Decimal(1),
    "K": Decimal(1) / 1024,
    "M": Decimal(1),
    "G": Decimal(1024),
    "T": Decimal(1024) ** 2,
    "P": Decimal(1024) ** 3,
}
# The TRES whose counts are sizes in megabytes (burst buffers are "bb/<plugin>").
_SIZE_TRES = frozenset({"mem", "vmem", "fs/disk"})
_TRES_VALUE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMGTP]?)")
_TRES_NAME = re.compile(r"[^\s=,]+")
GPU = "gres/gpu"

# Wide enough for any quantity a scheduler writes; an inexact result raises instead.
_EXACT = Context(prec=200, traps=[Inexact, InvalidOperation, Overflow])


def _tidy(value: Decimal) -> Decimal:
    """1536.0 -> 1536, 0.50 -> 0.5: equal values, one spelling."""
    if value == value.to_integral_value():
        return value.quantize(Decimal(1), context=_EXACT) + 0  # + 0 turns -0 into 0
    return value.normalize(context=_EXACT)


def is_size_tres(name: str) -> bool:
    return name in _SIZE_TRES or name.startswith("bb/")


def parse_tres(text: str) -> dict[str, Decimal]:
    """Parses a Slurm TRES string (`cpu=4,mem=16G,node=1,billing=8,gres/gpu:h200=2`).

    Sizes (mem, vmem, fs/disk, bb/*) become megabytes: Slurm's suffixes K, M, G, T, P are
    1024-based and a bare number is already MB. Other TRES are plain counts. GPUs usually
    appear twice, untyped and typed (`gres/gpu=4,gres/gpu:h200=4`): both keys are kept, and
    gpu_counts() counts them once.
    """
    text = text.strip()
    if not text:
        return {}
    tres: dict[str, Decimal] = {}
    for entry in text.split(","):
        name, sep, value = entry.partition("=")
        if not sep or not _TRES_NAME.fullmatch(name):
            raise ParseError(f"TRES entry {entry!r} is not name=value (in {text!r})")
        if name in tres:
            raise ParseError(f"TRES {name!r} appears twice (in {text!r})")
        match = _TRES_VALUE.fullmatch(value)
        if match is None:
            raise ParseError(f"TRES {name}={value!r} is not a non-negative number")
        number, suffix = Decimal(match[1]), match[2]
        if is_size_tres(name):
            number = _EXACT.multiply(number, _SLURM_SIZE_MB[suffix])
        elif suffix:
            # Slurm only scales sizes; a suffix on a count means the text is not sacct's.
            raise ParseError(f"TRES {name}={value!r}: a count takes no unit suffix")
        tres[name] = _tidy(number)
    return tres


def gpu_counts(tres: dict[str, Decimal]) -> dict[str | None, Decimal]:
    """GPUs by model, each counted once: {"h200": 4} from `gres/gpu=4,gres/gpu:h200=4`.

    Without typed entries the total is returned under None ({None: 4}); GPUs in the total
    that no typed entry accounts for are also reported under None. No GPUs: {}.
    """
    prefix = GPU + ":"
    typed = {name.removeprefix(prefix): n for name, n in tres.items() if name.startswith(prefix)}
    untyped = tres.get(GPU, Decimal(0)) - sum(typed.values(), Decimal(0))
    counts: dict[str | None, Decimal] = {model: n for model, n in typed.items() if n}
    if untyped > 0:
        counts[None] = untyped
    return counts


# https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))"
    r"(?:(?P<exponent>[eE][+-]?[0-9]+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E))?"
)
_QUANTITY_SUFFIX = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
# Kubernetes refuses anything larger; it also bounds the exponent form ("1e999999999").
QUANTITY_MAX = Decimal(2) ** 63 - 1


def parse_quantity(text: str) -> Decimal:
    """Parses a Kubernetes resource quantity (`500m`, `1.5`, `2Gi`, `1e3`, `4k`) exactly.

    A sign is allowed, as in Kubernetes' grammar; callers refuse negatives where they make
    no sense. The value is the one written: Kubernetes itself would round sub-milli precision up
    (0.1m -> 1m), which is its storage rule, not the quantity's meaning.
    """
    match = _QUANTITY.fullmatch(text.strip())
    if match is None:
        raise ParseError(f"{text!r} is not a Kubernetes quantity (e.g. 500m, 1.5, 2Gi)")
    number = match["number"] + (match["exponent"] or "")
    try:
        value = Decimal(number)
        if value.copy_abs() > QUANTITY_MAX:
            raise ParseError(f"{text!r} is larger than a Kubernetes quantity can be")
        value = _EXACT.multiply(value, _QUANTITY_SUFFIX[match["suffix"]])
        if value.copy_abs() > QUANTITY_MAX:
            raise ParseError(f"{text!r} is larger than a Kubernetes quantity can be")
        return _tidy(value)
    except ArithmeticError:  # Inexact, Overflow, Underflow and friends
        raise ParseError(f"{text!r} is out of range or too long to keep exactly") from None
