"""Parsers for scheduler accounting output: pure Python, no database.

Each parser yields, per input record, a JobRecord (a chargeable job), a Skipped (a record
deliberately not charged: a step, a job not ended yet, a job that never ran, an earlier
run of a requeued job) or a ParseError naming its line; one bad line never aborts a file.
collect() gathers them into a ParseResult for small inputs.

    with open_text("sacct-2026-03-01.txt.gz") as lines:
        for item in parse_sacct(lines, tz="America/New_York"): ...
"""

from .base import (
    JobRecord,
    ParsedItem,
    ParseError,
    ParseResult,
    Skipped,
    SkipReason,
    collect,
    open_text,
)
from .sacct import SACCT_FORMAT, parse_sacct
from .slurmrestd import parse_slurmrestd
from .swf import parse_swf
from .units import gpu_counts, parse_quantity, parse_tres

__all__ = [
    "SACCT_FORMAT",
    "JobRecord",
    "ParseError",
    "ParseResult",
    "ParsedItem",
    "SkipReason",
    "Skipped",
    "collect",
    "gpu_counts",
    "open_text",
    "parse_quantity",
    "parse_sacct",
    "parse_slurmrestd",
    "parse_swf",
    "parse_tres",
]
