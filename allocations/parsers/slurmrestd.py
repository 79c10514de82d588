"""slurmrestd's accounting jobs: `GET /slurmdb/v0.0.40/jobs` (also v0.0.41 and v0.0.42).

    {"jobs": [{"job_id": 4811, "user": "bob", "account": "phys-ml", "partition": "cpu",
               "cluster": "gpu1", "array": {"job_id": 4810, "task_id": {"set": true, ...}},
               "het": {"job_id": 0, "job_offset": {"set": false, ...}},
               "state": {"current": ["COMPLETED"], "reason": "None"},
               "time": {"start": 1772355600, "end": 1772359200, "elapsed": 3600, ...},
               "tres": {"allocated": [{"type": "cpu", "name": "", "id": 1, "count": 4},
                                      {"type": "gres", "name": "gpu:h200", ...}, ...]},
               "steps": [...]}, ...],
     "errors": [], "warnings": [], "meta": {...}}

The same rules as for sacct (see parsers.sacct): steps are not charged (only the job is
read, never its "steps" list), jobs that have not ended or never ran are skipped, and of
the runs of a requeued job (listed under one job_id with `?show_duplicates=true`, as
`sacct -D` does) only the last is kept, so both queries charge the same. Times are
epoch seconds, hence UTC. Integers may be plain or, depending on the version and field,
objects {"set": true, "infinite": false, "number": 123}; both are read.

TRES keys are spelled as in sacct's AllocTRES (`cpu`, `mem`, `gres/gpu`, `gres/gpu:h200`,
`billing`); slurmdbd stores memory in megabytes, so counts need no conversion.
"""

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .base import (
    NOT_ENDED_YET,
    JobRecord,
    LatestRuns,
    ParsedItem,
    ParseError,
    Skipped,
    SkipReason,
)
from .sacct import NOT_ENDED_STATES

# Job base states; state.current also lists flags (COMPLETING, REQUEUED, ...).
BASE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "SUSPENDED",
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
    }
)


def parse_slurmrestd(data: Mapping[str, Any] | str | bytes) -> Iterator[ParsedItem]:
    """Yields a JobRecord, Skipped or ParseError per entry of the response's "jobs" list
    (`line` is the entry's 0-based index), and a ParseError per entry of its "errors"."""
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError as exc:
            yield ParseError(f"not JSON: {exc}", where="document")
            return
    if not isinstance(data, Mapping) or not isinstance(data.get("jobs"), list):
        yield ParseError('no "jobs" list: not a slurmdb jobs response', where="document")
        return
    # slurmrestd reports failures next to the data, which may then be incomplete.
    for index, error in enumerate(data.get("errors") or []):
        text = isinstance(error, Mapping) and (error.get("description") or error.get("error"))
        yield ParseError(f"slurmrestd reported: {text or repr(error)}", where=f"errors[{index}]")
    runs = LatestRuns()
    for index, job in enumerate(data["jobs"]):
        where = f"jobs[{index}]"
        try:
            if not isinstance(job, Mapping):
                raise ParseError(f"a job is an object, not {type(job).__name__}")
            key, when = _rank(job)
            item = _item(job, index, job_id=key[1])
        except ParseError as exc:
            yield ParseError(exc.reason, line=index, where=where)
            continue
        if isinstance(item, ParseError):
            item = ParseError(item.reason, line=index, where=where)
        yield from runs.offer(key, when, index, item)
    yield from runs.finish()


def _rank(job: Mapping[str, Any]) -> tuple[tuple[str | None, str], datetime]:
    job_id = _integer(job.get("job_id"), "job_id")
    if not job_id:
        raise ParseError("no job_id")
    end = _time(_field(job, "time").get("end"), "time.end")
    return (job.get("cluster") or None, str(job_id)), end or NOT_ENDED_YET


def _item(job: Mapping[str, Any], index: int, *, job_id: str) -> JobRecord | Skipped | ParseError:
    try:
        states = _states(job)
        state = next((s for s in states if s in BASE_STATES), states[0])
        times = _field(job, "time")
        end = _time(times.get("end"), "time.end")
        if end is None or NOT_ENDED_STATES.intersection(states):
            detail = "+".join(states) + (", no end" if end is None else "")
            return Skipped(index, job_id, SkipReason.NOT_ENDED, detail)
        allocated = _field(job, "tres").get("allocated")
        if not allocated:
            return Skipped(index, job_id, SkipReason.NEVER_RAN, f"{state}, no allocated TRES")
        start = _time(times.get("start"), "time.start")
        if start is None:
            raise ParseError("the job ended but has no time.start")
        if end < start:
            raise ParseError("time.end is before time.start")
        user = job.get("user")
        if not user or not isinstance(user, str):
            raise ParseError("no user")
        elapsed = _integer(times.get("elapsed"), "time.elapsed")
        return JobRecord(
            line=index,
            job_id=job_id,
            display_id=_display_id(job, job_id),
            user=user,
            account=_text(job, "account"),
            partition=_text(job, "partition"),
            state=state,
            tres=_tres(allocated),
            elapsed_seconds=elapsed if elapsed is not None else int((end - start).total_seconds()),
            start=start,
            end=end,
            cluster=job.get("cluster") or None,
            raw=dict(job),
        )
    except ParseError as exc:
        return exc


def _field(job: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = job.get(name)
    if not isinstance(value, Mapping):
        raise ParseError(f'no "{name}" object')
    return value


def _text(job: Mapping[str, Any], name: str) -> str:
    value = job.get(name) or ""
    if not isinstance(value, str):
        raise ParseError(f"{name} is not text: {value!r}")
    return value


def _integer(value: Any, what: str) -> int | None:
    """An integer written plainly or as {"set", "infinite", "number"}; None when unset."""
    if isinstance(value, Mapping):
        if value.get("infinite"):
            raise ParseError(f"{what} is infinite")
        if not value.get("set"):
            return None
        value = value.get("number")
    if value is None:
        return None
    # bool is an int in Python, and JSON true is no count.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ParseError(f"{what} is not a non-negative integer: {value!r}")
    return value


def _time(value: Any, what: str) -> datetime | None:
    seconds = _integer(value, what)
    # slurmdbd writes 0 for a time that has not happened (a running job's end).
    return datetime.fromtimestamp(seconds, UTC) if seconds else None


def _states(job: Mapping[str, Any]) -> list[str]:
    state = job.get("state")
    # v0.0.40 on: {"current": ["COMPLETED"], ...}; before: {"current": "COMPLETED"}.
    current = state.get("current") if isinstance(state, Mapping) else state
    states = [current] if isinstance(current, str) else current
    if not states or not isinstance(states, list) or not all(isinstance(s, str) for s in states):
        raise ParseError(f"state.current is not a list of states: {current!r}")
    return states


def _display_id(job: Mapping[str, Any], job_id: str) -> str:
    array = job.get("array") if isinstance(job.get("array"), Mapping) else {}
    het = job.get("het") if isinstance(job.get("het"), Mapping) else {}
    array_job = _integer(array.get("job_id"), "array.job_id")
    task = _integer(array.get("task_id"), "array.task_id")
    if array_job and task is not None:
        return f"{array_job}_{task}"
    het_job = _integer(het.get("job_id"), "het.job_id")
    offset = _integer(het.get("job_offset"), "het.job_offset")
    if het_job and offset is not None:
        return f"{het_job}+{offset}"
    return job_id


def _tres(allocated: Any) -> dict[str, Decimal]:
    if not isinstance(allocated, list):
        raise ParseError("tres.allocated is not a list")
    tres: dict[str, Decimal] = {}
    for entry in allocated:
        if not isinstance(entry, Mapping) or not entry.get("type"):
            raise ParseError(f"tres.allocated entry {entry!r} has no type")
        name = f"{entry['type']}/{entry['name']}" if entry.get("name") else str(entry["type"])
        count = _integer(entry.get("count"), f"the count of TRES {name}")
        if count is None:
            raise ParseError(f"TRES {name} has no count")
        if name in tres:
            raise ParseError(f"TRES {name} appears twice")
        tres[name] = Decimal(count)
    return tres
