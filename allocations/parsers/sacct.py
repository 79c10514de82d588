"""Slurm `sacct --parsable2` output.

Run sacct with a header (never --noheader) and these columns, in any order:

    SACCT_FORMAT=JobIDRaw,JobID,Cluster,User,Account,Partition,AllocTRES,ElapsedRaw,Start,End,State
    TZ=UTC SLURM_TIME_FORMAT=standard sacct --allusers --parsable2 \\
        --starttime 2026-03-01T00:00:00 --endtime 2026-03-02T00:00:00 --format=$SACCT_FORMAT

Other columns are ignored; Cluster is optional (records then have cluster None). With
TZ=UTC the times need no conversion and have no DST ambiguity; otherwise pass the zone
sacct ran in as `tz`. `--noconvert` keeps memory exact (sacct otherwise rounds `1.50T`).

The rules, and why:
- Steps (`123.batch`, `123.extern`, `123.0`, `123_4.batch`) are skipped: the job's allocation
  line already holds everything the job was given, and charging steps too would bill twice.
- Array tasks (`123_4`) and het job components (`123+0`) are jobs; job_id is their JobIDRaw,
  the unique one (`123_4` may have JobIDRaw 127).
- A job that is pending, running, suspended or requeued, or whose End is `Unknown`, is not
  yet chargeable: it is reported as skipped and will be charged by a later import.
- A job with an empty AllocTRES never ran (cancelled while pending): skipped.
- `CANCELLED by 1234` is the state CANCELLED.
- Requeued jobs: plain sacct shows a job's last run, `sacct -D` every run under the same
  JobIDRaw. Only the last run (latest End) is kept and earlier ones are reported as
  superseded, because the portal charges each job id once: keeping the last run makes plain
  and -D exports, and any replay of either, charge the same thing. Earlier runs are the
  ones ended by node failure or preemption, which sites do not bill.
"""

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .base import (
    NOT_ENDED_YET,
    JobRecord,
    LatestRuns,
    ParsedItem,
    ParseError,
    Skipped,
    SkipReason,
)
from .units import parse_tres

SACCT_FORMAT = "JobIDRaw,JobID,Cluster,User,Account,Partition,AllocTRES,ElapsedRaw,Start,End,State"
REQUIRED_COLUMNS = tuple(c for c in SACCT_FORMAT.split(",") if c != "Cluster")
# Base states (and requeue states) of a job that has not finished for good.
NOT_ENDED_STATES = frozenset(
    {"PENDING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}
)
_DIGITS = re.compile(r"[0-9]+")
_NO_TIME = frozenset({"", "Unknown", "None"})
_STANDARD_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")


def parse_sacct(lines: Iterable[str], *, tz: str | tzinfo = "UTC") -> Iterator[ParsedItem]:
    """Yields a JobRecord, Skipped or ParseError per line of `sacct --parsable2` output.

    Errors and steps are yielded as they are read; jobs wait until the input ends, because
    a later line may hold a later run of the same job (see the module docstring).
    """
    zone = _zone(tz)  # checked now, not at the first next()
    return _parse(lines, zone)


def _zone(tz: str | tzinfo) -> tzinfo:
    if isinstance(tz, tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r}") from None


def _parse(lines: Iterable[str], tz: tzinfo) -> Iterator[ParsedItem]:
    header: list[str] | None = None
    names: list[str] = []  # the header's column names, lower-cased
    parsable1 = False
    runs = LatestRuns()
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("|")
        if header is None:
            if fields[-1] == "":  # --parsable (not 2) ends every line with a "|"
                parsable1 = True
                fields.pop()
            problem = _header_problem(fields)
            if problem:
                yield ParseError(problem, line=number)
                return
            header = fields
            names = [name.lower() for name in header]
            continue
        if parsable1 and len(fields) == len(header) + 1 and fields[-1] == "":
            fields.pop()
        if len(fields) != len(header):
            yield ParseError(
                f"{len(fields)} fields, the header has {len(header)}: {line!r}", line=number
            )
            continue
        row = dict(zip(names, fields, strict=True))
        job_id, display_id = row["jobidraw"], row["jobid"]
        if "." in job_id or "." in display_id:
            yield Skipped(number, job_id, SkipReason.STEP)
            continue
        cluster = row.get("cluster") or None
        try:
            when, item = _run(row, number, tz, raw=dict(zip(header, fields, strict=True)))
        except ParseError as exc:  # no usable End: the line cannot be ranked among runs
            yield ParseError(exc.reason, line=number)
            continue
        yield from runs.offer((cluster, job_id), when, number, item)
    yield from runs.finish()


def _header_problem(fields: list[str]) -> str | None:
    present = {name.lower() for name in fields}
    missing = [name for name in REQUIRED_COLUMNS if name.lower() not in present]
    if len(missing) == len(REQUIRED_COLUMNS):
        return (
            "the first line is not a sacct header: run sacct with --parsable2 and without "
            f"--noheader, --format={SACCT_FORMAT}"
        )
    if missing:
        return f"the header has no {', '.join(missing)} column: run sacct --format={SACCT_FORMAT}"
    return None


def _run(
    row: dict[str, str], number: int, tz: tzinfo, *, raw: dict[str, str]
) -> tuple[datetime, JobRecord | Skipped | ParseError]:
    """The line's rank among the runs of its job (its end) and what it yields."""
    job_id = row["jobidraw"]
    if not job_id:
        raise ParseError("JobIDRaw is empty")
    state = _state(row["state"])
    ends = _instants(row["end"], tz, "End")
    if ends is None or state in NOT_ENDED_STATES:
        detail = f"{state}, End {row['end'] or 'empty'}"
        # A requeued run has an End and ranks by it; a run still going ranks last.
        still_going = ends is None or state in {"PENDING", "RUNNING", "SUSPENDED"}
        when = NOT_ENDED_YET if still_going else ends[0]
        return when, Skipped(number, job_id, SkipReason.NOT_ENDED, detail)
    if not row["alloctres"]:
        return ends[0], Skipped(number, job_id, SkipReason.NEVER_RAN, f"{state}, no AllocTRES")
    try:
        return ends[0], _record(row, number, tz, state, ends, raw)
    except ParseError as exc:
        return ends[0], ParseError(exc.reason, line=number)


def _record(
    row: dict[str, str],
    number: int,
    tz: tzinfo,
    state: str,
    ends: tuple[datetime, ...],
    raw: dict[str, str],
) -> JobRecord:
    if not row["user"]:
        raise ParseError("the job's allocation line has no User")
    elapsed = _elapsed(row["elapsedraw"])
    starts = _instants(row["start"], tz, "Start")
    if starts is None:
        raise ParseError(f"the job ended but has no Start ({row['start']!r})")
    start, end = _pick(starts, ends, elapsed)
    if end < start:
        raise ParseError(f"End {row['end']} is before Start {row['start']}")
    return JobRecord(
        line=number,
        job_id=row["jobidraw"],
        display_id=row["jobid"],
        user=row["user"],
        account=row["account"],
        partition=row["partition"],
        state=state,
        tres=parse_tres(row["alloctres"]),
        elapsed_seconds=elapsed,
        start=start,
        end=end,
        cluster=row.get("cluster") or None,
        raw=raw,
    )


def _state(text: str) -> str:
    words = text.split()
    if not words:
        raise ParseError("State is empty")
    return words[0]  # "CANCELLED by 1234" -> CANCELLED


def _elapsed(text: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise ParseError(f"ElapsedRaw {text!r} is not a whole number of seconds")
    return int(text)


def _instants(text: str, tz: tzinfo, column: str) -> tuple[datetime, ...] | None:
    """The UTC instants a local wall time can mean: one, or two in the hour a DST change
    repeats (earlier first). None for Unknown/None."""
    if text in _NO_TIME:
        return None
    if not _STANDARD_TIME.fullmatch(text):
        raise ParseError(
            f"{column} {text!r} is not YYYY-MM-DDTHH:MM:SS (run sacct with "
            "SLURM_TIME_FORMAT=standard)"
        )
    try:
        wall = datetime.fromisoformat(text)
    except ValueError:
        raise ParseError(f"{column} {text!r} is not a valid time") from None
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) != wall:
        # Clocks skip this hour; sacct cannot have printed it in this zone.
        raise ParseError(f"{column} {text} does not exist in {tz} (a DST gap): wrong tz?")
    return (first,) if first == second else (first, second)


def _pick(
    starts: tuple[datetime, ...], ends: tuple[datetime, ...], elapsed: int
) -> tuple[datetime, datetime]:
    """Chooses the readings of an ambiguous Start or End whose difference best matches
    ElapsedRaw; ties (and unambiguous times) take the earlier reading."""
    target = timedelta(seconds=elapsed)
    pairs = [(start, end) for start in starts for end in ends]
    return min(pairs, key=lambda pair: abs(pair[1] - pair[0] - target))
