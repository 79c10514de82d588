"""Usage batches as importers post them: names resolved in bulk, every record checked,
then charged all or nothing by services.usage_record_batch.

A record names its job, user, allocation (the Slurm account) and resource, and its
amount either as raw unit-seconds or as a count of units with the job's elapsed time
(elapsed_seconds, or start and end). It is charged at charged_at, by default its end.
"""

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db.models.functions import Lower
from django.utils.dateparse import parse_datetime

from accounts.models import User
from allocations.conversion import parse_decimal
from allocations.models import RAW_DIGITS, RAW_PLACES, Allocation, Cluster, Resource
from allocations.services import BatchRejected, UsageBatchResult, UsageInput, usage_record_batch

MAX_BATCH = 10_000
FIELDS = {
    "job_id",
    "user",
    "allocation",
    "resource",
    "raw_unit_seconds",
    "count",
    "elapsed_seconds",
    "start",
    "end",
    "charged_at",
}


class _Bad(Exception):
    def __init__(self, field: str, message: str):
        self.field, self.message = field, message


def _text(record: Mapping, field: str, limit: int) -> str:
    value = record.get(field)
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise _Bad(field, f"{field} is required")
    value = str(value).strip()
    if len(value) > limit:
        raise _Bad(field, f"{field} is longer than {limit} characters")
    return value


def _time(record: Mapping, field: str) -> dt.datetime | None:
    value = record.get(field)
    if value in (None, ""):
        return None
    try:
        parsed = parse_datetime(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise _Bad(field, f"{field} is not an ISO 8601 date and time: {value!r}")
    if parsed.tzinfo is None:
        raise _Bad(field, f"{field} needs a time zone (e.g. 2026-03-01T12:00:00Z)")
    return parsed


def _number(record: Mapping, field: str, *, places: int, digits: int) -> Decimal | None:
    value = record.get(field)
    if value is None:
        return None
    try:
        number = parse_decimal(value, field=field, places=places, digits=digits)
    except ValidationError as exc:
        raise _Bad(field, exc.messages[0]) from None
    if number < 0:
        raise _Bad(field, f"{field} cannot be negative")
    return number


def _amount(record: Mapping, start, end) -> Decimal:
    raw = _number(record, "raw_unit_seconds", places=RAW_PLACES, digits=RAW_DIGITS)
    count = _number(record, "count", places=RAW_PLACES, digits=12)
    if (raw is None) == (count is None):
        raise _Bad("raw_unit_seconds", "give raw_unit_seconds, or count with the elapsed time")
    if raw is not None:
        return raw
    elapsed = _number(record, "elapsed_seconds", places=0, digits=12)
    if elapsed is None:
        if start is None or end is None:
            raise _Bad("elapsed_seconds", "give elapsed_seconds, or start and end, with count")
        elapsed = Decimal((end - start).total_seconds())
        if elapsed < 0:
            raise _Bad("end", "the job ends before it starts")
    return count * elapsed


def usage_ingest(*, cluster: Cluster, records: Sequence[Mapping]) -> UsageBatchResult:
    if not isinstance(records, Sequence) or isinstance(records, str | bytes):
        raise ValidationError({"records": "Give a list of usage records."})
    if not records:
        raise ValidationError({"records": "The batch is empty."})
    if len(records) > MAX_BATCH:
        raise ValidationError(
            {"records": f"At most {MAX_BATCH:,} records per batch; this one has {len(records):,}."}
        )
    records = [r if isinstance(r, Mapping) else {} for r in records]

    def names(field):
        return {str(r.get(field)).strip() for r in records if isinstance(r.get(field), str | int)}

    # Three queries for the whole batch, whatever its size.
    users = User.objects.in_bulk(names("user"), field_name="username")
    allocations = {
        a.name: a for a in Allocation.objects.filter(cluster=cluster, name__in=names("allocation"))
    }
    resources = {
        r.lowered: r
        for r in Resource.objects.filter(cluster=cluster).annotate(lowered=Lower("name"))
    }

    errors: list[dict] = []
    inputs: list[UsageInput] = []
    seen: set[tuple] = set()
    for index, record in enumerate(records):
        try:
            unknown = sorted(set(record) - FIELDS)
            if unknown:
                raise _Bad(unknown[0], f"unknown field {unknown[0]!r}")
            if not record:
                raise _Bad("job_id", "a record is an object with job_id, user, allocation, …")
            job_id = _text(record, "job_id", 64)
            username = _text(record, "user", 150)
            account = _text(record, "allocation", 64)
            resource_name = _text(record, "resource", 100)
            start, end = _time(record, "start"), _time(record, "end")
            charged_at = _time(record, "charged_at") or end
            if charged_at is None:
                raise _Bad("charged_at", "give charged_at, or the job's end")
            if start and end and end < start:
                raise _Bad("end", "the job ends before it starts")
            raw = _amount(record, start, end)
            user = users.get(username)
            if user is None:
                raise _Bad("user", f"unknown user {username!r}")
            allocation = allocations.get(account)
            if allocation is None:
                raise _Bad("allocation", f"unknown allocation {account!r} on {cluster.name}")
            resource = resources.get(resource_name.lower())
            if resource is None:
                raise _Bad("resource", f"unknown resource {resource_name!r} on {cluster.name}")
            if (job_id, user.pk, resource.pk) in seen:
                raise _Bad("job_id", f"job {job_id} appears twice in this batch")
            seen.add((job_id, user.pk, resource.pk))
        except _Bad as bad:
            errors.append({"index": index, "field": bad.field, "message": bad.message})
            continue
        inputs.append(
            UsageInput(
                job_id=job_id,
                user=user,
                allocation=allocation,
                resource=resource,
                raw_unit_seconds=raw,
                charged_at=charged_at,
                started_at=start,
                ended_at=end,
            )
        )
    if errors:
        raise BatchRejected(errors)
    return usage_record_batch(cluster=cluster, records=inputs)
