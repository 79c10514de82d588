"""Daily usage rollups (UsageDaily): what charts and reports read instead of the usage table.

A rollup row is keyed by (allocation, UTC day of charged_at, user, resource). An
adjustment counts on its job's day, not on the day it was made, so a refunded job leaves
its day and a re-rated one moves with it; the rows always sum to the allocation's su_used.

Two ways keep them:
- New charges (a usage batch's inserted rows, the bulk of all writes) add to their keys
  in the batch's own transaction (`rollups_add`), under the allocation locks the batch
  holds: the rollups move with the records, as the maintained su_used totals do, and a
  batch costs one statement more, not a recompute of its days.
- Everything else (corrections, refunds, re-rating: rare, and a job's raw amount then
  depends on its latest adjustment) calls `rollups_touched` with the (allocation, day)
  keys it touched, and a task recomputes exactly those keys from the records after the
  commit. Recomputing is idempotent, so a task run twice, late or out of order leaves the
  same rows; it takes the same allocation locks, so it never interleaves with an add.
The periodic `rollups_refresh_all` repairs keys whose task was lost, and `rollups_drift`
proves the rows match the records (the `verify_rollups` command).
"""

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.db.models import Count, F, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce, TruncDate

from allocations.conversion import SU_QUANTUM
from allocations.models import RAW_PLACES, Allocation, Usage, UsageAdjustment, UsageDaily

RAW_QUANTUM = Decimal(1).scaleb(-RAW_PLACES)
ONE_DAY = dt.timedelta(days=1)
# Whole-allocation refreshes commit per this many allocations, so a long repair run
# holds no lock for long.
REFRESH_ALL_CHUNK = 50

Key = tuple[int, int, int, dt.date]  # allocation, user, resource, day


def _day(value: dt.date | dt.datetime | str) -> dt.date:
    if isinstance(value, str):
        return dt.date.fromisoformat(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).date()
    return value


def rollups_touched(allocation_day_pairs: Iterable[tuple[int, dt.date | dt.datetime]]) -> None:
    """The hook for every writer of usage or adjustments: (allocation id, day or charge
    time) of the rows written. The recompute is enqueued to run once the current
    transaction commits (at once outside one), so it reads what was committed."""
    keys = {(int(a), _day(day)) for a, day in allocation_day_pairs}
    if not keys:
        return
    payload = [[a, day.isoformat()] for a, day in sorted(keys)]

    # Robust: a broker that is down must not turn the writer's committed work into an
    # error; the refresh is logged as lost and the nightly rebuild repairs those keys.
    # (A function, not a partial: Django names the callback by __qualname__ in that log.)
    def enqueue_rollups_refresh() -> None:
        from allocations.tasks import refresh_rollups_task

        refresh_rollups_task.delay(payload)

    transaction.on_commit(enqueue_rollups_refresh, robust=True)


# rollups_add in one statement, around a SELECT of (allocation_id, user_id, resource_id,
# day, su, raw, jobs): usage_store's batch INSERT feeds it from its RETURNING.
ROLLUP_ADD = (
    "INSERT INTO allocations_usagedaily (allocation_id, user_id, resource_id, day, su, raw, jobs)"
)
ROLLUP_ADD_CONFLICT = """
    ON CONFLICT ON CONSTRAINT allocations_usagedaily_one_per_key DO UPDATE SET
        su = allocations_usagedaily.su + EXCLUDED.su,
        raw = allocations_usagedaily.raw + EXCLUDED.raw,
        jobs = allocations_usagedaily.jobs + EXCLUDED.jobs
"""


def rollups_add(deltas: dict[Key, tuple[Decimal, Decimal, int]]) -> None:
    """Adds new charges to their rollup rows: {key: (su, raw, jobs)} of usage rows just
    inserted (no adjustment yet, so their raw amount is their own). The caller holds
    the keys' allocations locked in the same transaction (usage_record_rows does), so a
    concurrent recompute of these keys either ran before or runs after and sees them.
    (On PostgreSQL a usage batch does the same in its INSERT statement, with ROLLUP_ADD:
    usage_store.PostgresStore.insert.)"""
    if not deltas:
        return
    # Read the keys' rows, then update or create: the locks make this safe.
    existing = {
        (row.allocation_id, row.user_id, row.resource_id, row.day): row
        for row in UsageDaily.objects.filter(
            allocation_id__in={k[0] for k in deltas}, day__in={k[3] for k in deltas}
        )
    }
    changed, created = [], []
    for (a, u, r, day), (su, raw, jobs) in deltas.items():
        row = existing.get((a, u, r, day))
        if row is None:
            created.append(
                UsageDaily(
                    allocation_id=a, user_id=u, resource_id=r, day=day, su=su, raw=raw, jobs=jobs
                )
            )
        else:
            row.su, row.raw, row.jobs = row.su + su, row.raw + raw, row.jobs + jobs
            changed.append(row)
    UsageDaily.objects.bulk_update(changed, ["su", "raw", "jobs"], batch_size=500)
    UsageDaily.objects.bulk_create(created, batch_size=500)


def rollup_keys_for(rows: Iterable[Usage | UsageAdjustment]) -> list[tuple[int, dt.datetime]]:
    """The (allocation id, charge time) keys of usage rows or adjustments, for
    rollups_touched. Adjustments count on their job's day, read in one query."""
    keys, usage_ids = [], set()
    for row in rows:
        if isinstance(row, UsageAdjustment):
            usage_ids.add(row.usage_id)
        else:
            keys.append((row.allocation_id, row.charged_at))
    if usage_ids:
        keys += Usage.objects.filter(pk__in=usage_ids).values_list("allocation_id", "charged_at")
    return keys


def _day_runs(days: Iterable[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Consecutive days merged into [first, last] runs, so the usage query is a few range
    scans on the (allocation, charged_at) index instead of a function of every row."""
    runs: list[list[dt.date]] = []
    for day in sorted(set(days)):
        if runs and day - runs[-1][1] == ONE_DAY:
            runs[-1][1] = day
        else:
            runs.append([day, day])
    return [(first, last) for first, last in runs]


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def _in_days(days: Iterable[dt.date] | None, prefix: str = "") -> Q:
    if days is None:
        return Q()
    q = Q(pk__in=[])
    for first, last in _day_runs(days):
        q |= Q(
            **{
                f"{prefix}charged_at__gte": _midnight(first),
                f"{prefix}charged_at__lt": _midnight(last + ONE_DAY),
            }
        )
    return q


def _recompute(allocation_ids: Iterable[int] | None, days: Iterable[dt.date] | None) -> dict:
    """The rollup rows the records say, {key: (su, raw, jobs)}: two grouped queries, one
    over usage and one over adjustments, whatever the number of records."""
    usage = Usage.objects.filter(_in_days(days))
    adjustments = UsageAdjustment.objects.filter(_in_days(days, "usage__"))
    if allocation_ids is not None:
        usage = usage.filter(allocation_id__in=allocation_ids)
        adjustments = adjustments.filter(usage__allocation_id__in=allocation_ids)
    # A job's raw amount is that of its latest correction or re-rating, if any.
    latest_raw = Subquery(
        UsageAdjustment.objects.filter(usage_id=OuterRef("pk"), raw_unit_seconds__isnull=False)
        .order_by("-id")
        .values("raw_unit_seconds")[:1]
    )
    rows: dict[Key, list] = {}
    for a, u, r, day, su, raw, jobs in (
        usage.annotate(day=TruncDate("charged_at", tzinfo=dt.UTC))
        .values("allocation_id", "user_id", "resource_id", "day")
        .annotate(
            total_su=Sum("su_amount"),
            total_raw=Sum(Coalesce(latest_raw, F("raw_unit_seconds"))),
            jobs=Count("id"),
        )
        .order_by()
        .values_list(
            "allocation_id", "user_id", "resource_id", "day", "total_su", "total_raw", "jobs"
        )
    ):
        rows[(a, u, r, day)] = [Decimal(su), Decimal(raw), jobs]
    for a, u, r, day, delta in (
        adjustments.annotate(day=TruncDate("usage__charged_at", tzinfo=dt.UTC))
        .values("usage__allocation_id", "usage__user_id", "usage__resource_id", "day")
        .annotate(total=Sum("su_delta"))
        .order_by()
        .values_list("usage__allocation_id", "usage__user_id", "usage__resource_id", "day", "total")
    ):
        rows[(a, u, r, day)][0] += Decimal(delta)
    # SQLite sums NUMERIC columns as binary floats; at the ledger's scale they are exact.
    return {
        key: (su.quantize(SU_QUANTUM) + 0, raw.quantize(RAW_QUANTUM) + 0, jobs)
        for key, (su, raw, jobs) in rows.items()
    }


def _write(rows: dict) -> None:
    UsageDaily.objects.bulk_create(
        [
            UsageDaily(
                allocation_id=a, user_id=u, resource_id=r, day=day, su=su, raw=raw, jobs=jobs
            )
            for (a, u, r, day), (su, raw, jobs) in rows.items()
        ],
        batch_size=2000,
    )


def _lock(allocation_ids: list[int]) -> None:
    # Two refreshes of one allocation would both delete and then both insert its keys;
    # this queues the second behind the first. A no-key lock, so usage inserts that only
    # reference the allocation are not held up.
    list(
        Allocation.objects.select_for_update(no_key=True)
        .filter(pk__in=allocation_ids)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def rollups_refresh(*, allocation_ids: Iterable[int], days: Iterable[dt.date | str]) -> int:
    """Recomputes the rollups of these allocations on these days from the records.
    Idempotent. Returns the number of rollup rows now standing for them."""
    allocation_ids = sorted(set(allocation_ids))
    days = sorted({_day(d) for d in days})
    if not allocation_ids or not days:
        return 0
    with transaction.atomic():
        _lock(allocation_ids)
        rows = _recompute(allocation_ids, days)
        UsageDaily.objects.filter(allocation_id__in=allocation_ids).filter(day__in=days).delete()
        _write(rows)
    return len(rows)


def rollups_refresh_pairs(pairs: Iterable[tuple[int, dt.date | str]]) -> int:
    """rollups_refresh for a list of (allocation id, day) keys: one refresh per set of
    allocations that share the same days, so a batch's keys cost a few queries."""
    days_of: dict[int, set[dt.date]] = defaultdict(set)
    for allocation_id, day in pairs:
        days_of[int(allocation_id)].add(_day(day))
    by_days: dict[frozenset, list[int]] = defaultdict(list)
    for allocation_id, days in days_of.items():
        by_days[frozenset(days)].append(allocation_id)
    return sum(rollups_refresh(allocation_ids=ids, days=days) for days, ids in by_days.items())


def rollups_refresh_all(*, allocation_ids: Iterable[int] | None = None) -> int:
    """Rebuilds every rollup row of these allocations (all of them by default), a few
    allocations per transaction. Returns the number of rows written."""
    if allocation_ids is None:
        allocation_ids = Allocation.objects.order_by("pk").values_list("pk", flat=True)
    ids = sorted(set(allocation_ids))
    written = 0
    for i in range(0, len(ids), REFRESH_ALL_CHUNK):
        chunk = ids[i : i + REFRESH_ALL_CHUNK]
        with transaction.atomic():
            _lock(chunk)
            rows = _recompute(chunk, None)
            UsageDaily.objects.filter(allocation_id__in=chunk).delete()
            _write(rows)
        written += len(rows)
    return written


@dataclass(frozen=True)
class RollupDrift:
    allocation: str
    day: dt.date
    user: str
    resource: str
    field: str
    stored: object
    recomputed: object

    def __str__(self) -> str:
        return (
            f"allocation {self.allocation} on {self.day}, {self.user} / {self.resource}: "
            f"{self.field} is {self.stored}, records say {self.recomputed}"
        )


def rollups_drift() -> list[RollupDrift]:
    """Every rollup row that differs from what the usage records say, or is missing, or
    should not exist. Empty when the rollups are right."""
    expected = _recompute(None, None)
    stored = {
        (a, u, r, day): (Decimal(su).quantize(SU_QUANTUM) + 0, Decimal(raw), jobs)
        for a, u, r, day, su, raw, jobs in UsageDaily.objects.values_list(
            "allocation_id", "user_id", "resource_id", "day", "su", "raw", "jobs"
        )
    }
    drifts: list[tuple[Key, str, object, object]] = []
    for key in sorted(expected.keys() | stored.keys(), key=lambda k: (k[0], k[3], k[1], k[2])):
        want, have = expected.get(key), stored.get(key)
        if want is None or have is None:
            drifts.append((key, "row", _row_text(have), _row_text(want)))
            continue
        for field, h, w in zip(("su", "raw", "jobs"), have, want, strict=True):
            if h != w:
                drifts.append((key, field, h, w))
    if not drifts:
        return []
    return _describe(drifts)


def _row_text(row: tuple | None) -> str:
    return "absent" if row is None else "{} SU, {} raw, {} jobs".format(*row)


def _describe(drifts: list[tuple[Key, str, object, object]]) -> list[RollupDrift]:
    from accounts.models import User
    from allocations.models import Resource

    codes = dict(
        Allocation.objects.filter(pk__in={k[0] for k, *_ in drifts}).values_list("pk", "code")
    )
    users = dict(
        User.objects.filter(pk__in={k[1] for k, *_ in drifts}).values_list("pk", "username")
    )
    resources = dict(
        Resource.objects.filter(pk__in={k[2] for k, *_ in drifts}).values_list("pk", "name")
    )
    return [
        RollupDrift(
            allocation=str(codes.get(a, a)),
            day=day,
            user=users.get(u, str(u)),
            resource=resources.get(r, str(r)),
            field=field,
            stored=stored,
            recomputed=want,
        )
        for (a, u, r, day), field, stored, want in drifts
    ]
