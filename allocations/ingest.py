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
from allocations.services import (
    BatchNames,
    BatchRejected,
    UsageBatchResult,
    UsageRow,
    usage_record_rows,
)

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
# The fields of a record as allocations.mapping writes it.
USUAL = {
    "job_id",
    "user",
    "allocation",
    "resource",
    "raw_unit_seconds",
    "start",
    "end",
    "charged_at",
}
# Amounts a record may give: (decimal places, digits) as the database keeps them.
NUMBERS = {
    "raw_unit_seconds": (RAW_PLACES, RAW_DIGITS),
    "count": (RAW_PLACES, 12),
    "elapsed_seconds": (0, 12),
}


class _Bad(Exception):
    def __init__(self, field: str, message: str):
        self.field, self.message = field, message


def _text(record: Mapping, field: str, limit: int) -> str:
    value = record.get(field)
    if type(value) is str:  # the usual case, checked first
        text = value.strip()
        if text and len(text) <= limit:
            return text
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise _Bad(field, f"{field} is required")
    value = str(value).strip()
    if len(value) > limit:
        raise _Bad(field, f"{field} is longer than {limit} characters")
    return value


class _Parsed:
    """Times and amounts of one batch, each distinct text parsed once: a batch repeats
    them (charged_at is usually the end; many jobs have the same size)."""

    def __init__(self):
        self.times: dict[str, dt.datetime] = {}
        self.numbers: dict[str, dict[str, Decimal]] = {f: {} for f in NUMBERS}

    def time(self, record: Mapping, field: str) -> dt.datetime | None:
        value = record.get(field)
        if value is None or value == "":
            return None
        when = self.times.get(value) if type(value) is str else None
        if when is None:
            try:
                when = parse_datetime(value) if isinstance(value, str) else None
            except ValueError:
                when = None
            if when is None:
                raise _Bad(field, f"{field} is not an ISO 8601 date and time: {value!r}")
            if when.tzinfo is None:
                raise _Bad(field, f"{field} needs a time zone (e.g. 2026-03-01T12:00:00Z)")
            self.times[value] = when
        return when

    def aware(self, value: str) -> dt.datetime:
        """An ISO 8601 time with a zone, or ValueError (TypeError for a non-string)."""
        when = dt.datetime.fromisoformat(value)
        if when.tzinfo is None:
            raise ValueError("no time zone")
        self.times[value] = when
        return when

    def number(self, record: Mapping, field: str) -> Decimal | None:
        value = record.get(field)
        if value is None:
            return None
        known = self.numbers[field]
        if type(value) is str:
            number = known.get(value)
            if number is not None:
                return number
        places, digits = NUMBERS[field]
        try:
            number = parse_decimal(value, field=field, places=places, digits=digits)
        except ValidationError as exc:
            raise _Bad(field, exc.messages[0]) from None
        if number < 0:
            raise _Bad(field, f"{field} cannot be negative")
        if type(value) is str:
            known[value] = number
        return number

    def amount(self, record: Mapping, start, end) -> Decimal:
        raw = self.number(record, "raw_unit_seconds")
        count = self.number(record, "count")
        if (raw is None) == (count is None):
            raise _Bad("raw_unit_seconds", "give raw_unit_seconds, or count with the elapsed time")
        if raw is not None:
            return raw
        elapsed = self.number(record, "elapsed_seconds")
        if elapsed is None:
            if start is None or end is None:
                raise _Bad("elapsed_seconds", "give elapsed_seconds, or start and end, with count")
            elapsed = Decimal((end - start).total_seconds())
            if elapsed < 0:
                raise _Bad("end", "the job ends before it starts")
        return count * elapsed


def _names(records: list[Mapping], field: str) -> set[str]:
    try:
        values = {r.get(field) for r in records}
    except TypeError:  # a list or an object where a name belongs
        values = None
    if values is None or any(type(v) is not str for v in values if v is not None):
        # Each value made text first: in one set 1, 1.0 and True would be one value.
        return {str(r.get(field)).strip() for r in records if isinstance(r.get(field), str | int)}
    return {v.strip() for v in values if v is not None}


def usage_ingest(*, cluster: Cluster, records: Sequence[Mapping]) -> UsageBatchResult:
    """Checks every record of a batch and charges them all, or raises BatchRejected
    listing every bad one. What is checked here (shape, numbers, times, names, a key
    twice) is not checked again by services.usage_record_rows, which checks the rest
    (membership, resources, rates) and writes."""
    if not isinstance(records, Sequence) or isinstance(records, str | bytes):
        raise ValidationError({"records": "Give a list of usage records."})
    if not records:
        raise ValidationError({"records": "The batch is empty."})
    if len(records) > MAX_BATCH:
        raise ValidationError(
            {"records": f"At most {MAX_BATCH:,} records per batch; this one has {len(records):,}."}
        )
    records = [r if type(r) is dict or isinstance(r, Mapping) else {} for r in records]

    # Three queries for the whole batch, whatever its size.
    users = dict(
        User.objects.filter(username__in=_names(records, "user")).values_list("username", "pk")
    )
    allocations = {
        a.name: a
        for a in Allocation.objects.filter(cluster=cluster, name__in=_names(records, "allocation"))
    }
    allocation_ids = {name: a.pk for name, a in allocations.items()}
    resources = {
        r.lowered: r
        for r in Resource.objects.filter(cluster=cluster).annotate(lowered=Lower("name"))
    }
    # Resource names are matched without case; each spelling is looked up once.
    resource_ids = {name: r.pk for name, r in resources.items() if name == name.strip()}

    errors: list[dict] = []
    rows: list[UsageRow] = []
    seen: set[tuple] = set()
    parsed = _Parsed()
    times, raws = parsed.times, parsed.numbers["raw_unit_seconds"]
    # Names as a usual record spells them (the names the full check resolves to).
    clean_users = {k: v for k, v in users.items() if k == k.strip()}
    clean_allocations = {k: v for k, v in allocation_ids.items() if k == k.strip()}
    for index, record in enumerate(records):
        # The usual record, as allocations.mapping writes it: the eight USUAL fields,
        # names spelt as they resolve, the amount as raw_unit_seconds, aware times (each
        # text parsed once per batch). It is accepted here as the full check below would
        # accept it; anything else, or anything wrong, takes the full check.
        if type(record) is dict and record.keys() == USUAL:
            try:
                job_id = record["job_id"]
                raw = raws.get(record["raw_unit_seconds"]) or parsed.number(
                    record, "raw_unit_seconds"
                )
                start = times.get(record["start"]) or parsed.aware(record["start"])
                end = times.get(record["end"]) or parsed.aware(record["end"])
                charged_at = times.get(record["charged_at"]) or parsed.aware(record["charged_at"])
                user_id = clean_users.get(record["user"])
                allocation_id = clean_allocations.get(record["allocation"])
                resource_id = resource_ids.get(record["resource"])
                if (
                    type(job_id) is str
                    and 0 < len(job_id) <= 64
                    and job_id == job_id.strip()
                    and raw is not None
                    and start is not None
                    and end is not None
                    and charged_at is not None
                    and start <= end
                    and user_id is not None
                    and allocation_id is not None
                    and resource_id is not None
                    and (job_id, user_id, resource_id) not in seen
                ):
                    seen.add((job_id, user_id, resource_id))
                    row = (index, job_id, user_id, allocation_id, resource_id, raw)
                    rows.append((*row, charged_at, start, end))
                    continue
            except (_Bad, TypeError, ValueError):  # the full check says what is wrong
                pass
        try:
            if not FIELDS.issuperset(record):
                unknown = sorted(set(record) - FIELDS)[0]
                raise _Bad(unknown, f"unknown field {unknown!r}")
            if not record:
                raise _Bad("job_id", "a record is an object with job_id, user, allocation, …")
            job_id = _text(record, "job_id", 64)
            username = _text(record, "user", 150)
            account = _text(record, "allocation", 64)
            resource_name = _text(record, "resource", 100)
            start, end = parsed.time(record, "start"), parsed.time(record, "end")
            charged_at = parsed.time(record, "charged_at") or end
            if charged_at is None:
                raise _Bad("charged_at", "give charged_at, or the job's end")
            if start and end and end < start:
                raise _Bad("end", "the job ends before it starts")
            raw = parsed.amount(record, start, end)
            user_id = users.get(username)
            if user_id is None:
                raise _Bad("user", f"unknown user {username!r}")
            allocation_id = allocation_ids.get(account)
            if allocation_id is None:
                raise _Bad("allocation", f"unknown allocation {account!r} on {cluster.name}")
            resource_id = resource_ids.get(resource_name)
            if resource_id is None:
                resource_id = resource_ids.get(resource_name.lower())
                if resource_id is None:
                    raise _Bad("resource", f"unknown resource {resource_name!r} on {cluster.name}")
                resource_ids[resource_name] = resource_id
            key = (job_id, user_id, resource_id)
            if key in seen:
                raise _Bad("job_id", f"job {job_id} appears twice in this batch")
            seen.add(key)
        except _Bad as bad:
            errors.append({"index": index, "field": bad.field, "message": bad.message})
            continue
        rows.append(
            (index, job_id, user_id, allocation_id, resource_id, raw, charged_at, start, end)
        )
    if errors:
        raise BatchRejected(errors)
    batch_names = BatchNames(
        users={pk: name for name, pk in users.items()},
        allocations={a.pk: a for a in allocations.values()},
        resources={r.pk: r for r in resources.values()},
    )
    return usage_record_rows(cluster=cluster, rows=rows, names=batch_names, checked=True)
