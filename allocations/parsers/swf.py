"""The Standard Workload Format of the Parallel Workloads Archive.

A `;` comment header ("; UnixStartTime: 749458803", "; TimeZoneString: US/Pacific", ...)
and one job per line with 18 whitespace-separated fields, -1 meaning unknown. Times are
seconds after UnixStartTime, an epoch time, so they are UTC already: TimeZoneString only
says how the site's clocks read them.

The mapping: job_id = field 1; user = "u" + field 12; account = "g" + field 13 (the
group); partition = "q" + field 15 (the queue); tres = {"cpu": field 5}; elapsed = field 4;
start = UnixStartTime + submit + max(wait, 0) (NASA logs every wait as -1, its submit
times being start times, and LANL has a few negative waits); end = start + run time. An
unknown group or queue (-1) gives "". A job with no processors (-1: LANL has three) or a
negative run time cannot be charged and is a ParseError; run time 0 is a valid zero charge.
"""

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from .base import JobRecord, ParseError

SWF_FIELDS = (
    "job_number",
    "submit_time",
    "wait_time",
    "run_time",
    "allocated_processors",
    "average_cpu_time",
    "used_memory",
    "requested_processors",
    "requested_time",
    "requested_memory",
    "status",
    "user_id",
    "group_id",
    "executable_number",
    "queue_number",
    "partition_number",
    "preceding_job_number",
    "think_time",
)
# The fields the mapping uses, all integers (others, like field 6, may be fractional).
_USED = (
    "job_number",
    "submit_time",
    "wait_time",
    "run_time",
    "allocated_processors",
    "user_id",
    "group_id",
    "queue_number",
)
_INTEGER = re.compile(r"-?[0-9]+")
_HEADER = re.compile(r";\s?(\w+):\s*(.*)")
STATUS_STATES = {"0": "FAILED", "1": "COMPLETED", "5": "CANCELLED", "-1": "UNKNOWN"}


def parse_swf(lines: Iterable[str]) -> Iterator[JobRecord | ParseError]:
    """Yields a JobRecord or ParseError per job line, reading one line at a time."""
    header: dict[str, str] = {}
    origin: datetime | None = None
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if text.startswith(";"):
            # Continuation lines (";       http://...") are indented and have no key.
            match = _HEADER.match(text)
            if match:
                header.setdefault(match[1], match[2].strip())
            continue
        if origin is None:
            try:
                origin = _origin(header)
            except ParseError as exc:
                # Without the log's start no job can be dated: one error, not one per line.
                yield ParseError(exc.reason, line=number)
                return
        try:
            yield _job(text.split(), number, origin)
        except ParseError as exc:
            yield ParseError(exc.reason, line=number)


def _origin(header: dict[str, str]) -> datetime:
    value = header.get("UnixStartTime")
    if value is None:
        raise ParseError("no '; UnixStartTime:' in the header before the first job")
    if not _INTEGER.fullmatch(value):
        raise ParseError(f"UnixStartTime {value!r} is not epoch seconds")
    return datetime.fromtimestamp(int(value), UTC)


def _job(fields: list[str], number: int, origin: datetime) -> JobRecord:
    if len(fields) != len(SWF_FIELDS):
        raise ParseError(f"{len(fields)} fields, an SWF job has {len(SWF_FIELDS)}")
    raw = dict(zip(SWF_FIELDS, fields, strict=True))
    job, submit, wait, run, procs, user, group, queue = (_int(raw, name) for name in _USED)
    if procs <= 0:
        raise ParseError(f"job {job}: allocated processors {procs}: nothing to charge")
    if run < 0:
        raise ParseError(f"job {job}: run time {run}: nothing to charge")
    if submit < 0:
        raise ParseError(f"job {job}: unknown submit time")
    if user < 0:
        raise ParseError(f"job {job}: unknown user")
    start = origin + timedelta(seconds=submit + max(wait, 0))
    return JobRecord(
        line=number,
        job_id=str(job),
        display_id=str(job),
        user=f"u{user}",
        account=f"g{group}" if group >= 0 else "",
        partition=f"q{queue}" if queue >= 0 else "",
        state=STATUS_STATES.get(raw["status"], f"STATUS_{raw['status']}"),
        tres={"cpu": Decimal(procs)},
        elapsed_seconds=run,
        start=start,
        end=start + timedelta(seconds=run),
        cluster=None,
        raw=raw,
    )


def _int(raw: dict[str, str], name: str) -> int:
    # int() would also take "1_000" and non-ASCII digits; SWF fields are plain integers.
    if not _INTEGER.fullmatch(raw[name]):
        raise ParseError(f"{name} {raw[name]!r} is not an integer")
    return int(raw[name])
