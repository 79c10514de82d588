"""The set-based writes of a usage batch, for services.usage_record_rows.

A batch of 10,000 records is written in a constant number of statements. On PostgreSQL:
- the batch's charges are staged with a binary COPY into a temporary table (dropped with
  the batch: at its end, or with the rollback of a rejected one);
- the open holds of its jobs are found by joining the stage;
- one query joins the stage to the usage table on the usage key: it lists the records
  that repeat a charge exactly (duplicates) and returns the others whose job is already
  charged (corrections, or jobs adjusted since, which Python looks at one by one);
- one INSERT ... SELECT from the stage writes the new rows (the usage key's unique
  constraint is the last guard), adds them to their daily rollups, and answers with the
  sums per member of what it inserted, which are what the maintained totals move by.
Elsewhere (SQLite) the same steps go through the ORM, with the same results.

A charge is a tuple in the stage's column order:
(index, job_id, user_id, allocation_id, resource_id, raw, rate_id, su, charged_at,
started_at, ended_at).
"""

import datetime as dt
from collections import defaultdict
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from allocations.adjustments import ChargeState, charge_states
from allocations.models import Cluster, Hold, Usage
from allocations.rollups import ROLLUP_ADD, ROLLUP_ADD_CONFLICT, rollups_add

# A member's share of what was inserted: (allocation_id, user_id) -> (rows, SUs).
Inserted = dict[tuple[int, int], tuple[int, Decimal]]
# Records whose job is already charged: the indexes of those that repeat its charge
# exactly, and the others' charge states by record index.
Known = tuple[list[int], dict[int, ChargeState]]

STAGE = "usage_batch"
_STAGE_COLUMNS = (
    "idx integer NOT NULL, job_id varchar(64) NOT NULL, user_id bigint NOT NULL, "
    "allocation_id bigint NOT NULL, resource_id bigint NOT NULL, raw numeric(24, 3) NOT NULL, "
    "rate_id bigint NOT NULL, su numeric(20, 4) NOT NULL, charged_at timestamptz NOT NULL, "
    "started_at timestamptz, ended_at timestamptz"
)
# The binary COPY's types, column by column.
_STAGE_TYPES = ["int4", "varchar", "int8", "int8", "int8", "numeric", "int8", "numeric"] + [
    "timestamptz"
] * 3
_KEY = "allocations_usage_one_per_job_resource_user"


def store_for(cluster: Cluster) -> "PostgresStore | OrmStore":
    if connection.vendor == "postgresql":
        return PostgresStore(cluster)
    return OrmStore(cluster)


class PostgresStore:
    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.staged: int | None = None  # rows in the stage; None: no stage

    def stage(self, charges: list[tuple]) -> None:
        self.close()
        with connection.cursor() as cursor:
            # ON COMMIT DROP in case the caller's transaction outlives the batch; the
            # batch drops it itself (close), so several batches fit in one transaction.
            cursor.execute(f"CREATE TEMPORARY TABLE {STAGE} ({_STAGE_COLUMNS}) ON COMMIT DROP")
            with cursor.copy(f"COPY {STAGE} FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_STAGE_TYPES)
                for charge in charges:
                    copy.write_row(charge)
        self.staged = len(charges)

    def open_holds(self) -> list[Hold]:
        return list(
            Hold.objects.raw(
                "SELECT * FROM allocations_hold WHERE cluster_id = %s AND state = %s "  # noqa: S608
                f"AND job_id IN (SELECT job_id FROM {STAGE})",
                [self.cluster.pk, Hold.State.OPEN],
            )
        )

    def known(self) -> Known:
        # LATERAL ... LIMIT 1 and a scalar subquery keep the plan at one probe of the
        # usage key's index (and of the adjustments' usage index) per staged record. As a
        # plain join, right after a large import (before autovacuum has analysed the usage
        # table) the planner would hash the cluster's whole usage instead.
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                WITH matched AS (
                    SELECT s.idx, s.raw AS reported, u.*
                    FROM {STAGE} s
                    CROSS JOIN LATERAL (
                        SELECT u.id, u.allocation_id, u.user_id, u.raw_unit_seconds AS raw,
                               u.rate_id, u.su_amount,
                               (SELECT 1 FROM allocations_usageadjustment a
                                WHERE a.usage_id = u.id LIMIT 1) IS NOT NULL AS adjusted
                        FROM allocations_usage u
                        WHERE u.cluster_id = %s AND u.job_id = s.job_id
                          AND u.resource_id = s.resource_id AND u.user_id = s.user_id
                        LIMIT 1
                    ) u
                )
                SELECT idx, id, allocation_id, user_id, raw, rate_id, su_amount, adjusted, NULL
                FROM matched WHERE adjusted OR raw <> reported
                UNION ALL
                SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, array_agg(idx)
                FROM matched WHERE NOT adjusted AND raw = reported
                """,  # noqa: S608 (no user input in the statement)
                [self.cluster.pk],
            )
            rows = cursor.fetchall()
        repeated, others, adjusted = [], {}, {}
        for idx, pk, allocation_id, user_id, raw, rate_id, su, has_adjustments, same in rows:
            if idx is None:
                repeated = same or []
            elif has_adjustments:
                adjusted[pk] = idx
            else:
                others[idx] = ChargeState(pk, allocation_id, user_id, raw, rate_id, su, False)
        if adjusted:
            # Refunded, re-rated or corrected before: their state is the adjustments' sum.
            for pk, state in charge_states(Usage.objects.filter(pk__in=adjusted)).items():
                others[adjusted[pk]] = state
        return repeated, others

    def insert(self, known: Known, hold_jobs: set[str]) -> tuple[Inserted, set[str]]:
        """Inserts the staged records whose key is new. Returns what was inserted per
        member and which of hold_jobs were charged.

        A plain INSERT: the keys already charged were found under the cluster's lock,
        which every writer of usage takes, so none can appear meanwhile; if one did, the
        unique constraint would fail the batch rather than skip a record. (ON CONFLICT
        DO NOTHING would skip it silently, and its speculative insertion made the INSERT
        cost about half as much again per row on this table, measured on 10,000 rows.)

        The same statement adds the inserted rows to their daily rollups: rollups_add's
        upsert, fed from the INSERT's RETURNING rather than from Python."""
        repeated, others = known
        skip = [*repeated, *others]
        if len(skip) == self.staged:
            return {}, set()  # a replay: nothing is new
        where = "WHERE idx <> ALL(%s)" if skip else ""
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                WITH inserted AS (
                    INSERT INTO allocations_usage (
                        cluster_id, allocation_id, user_id, job_id, resource_id,
                        raw_unit_seconds, rate_id, su_amount, charged_at, started_at,
                        ended_at, recorded_at)
                    SELECT %s, allocation_id, user_id, job_id, resource_id, raw, rate_id, su,
                           charged_at, started_at, ended_at, %s
                    FROM {STAGE} {where} ORDER BY idx
                    RETURNING allocation_id, user_id, resource_id, job_id, raw_unit_seconds,
                              su_amount, charged_at
                ), rolled AS (
                    {ROLLUP_ADD}
                    SELECT allocation_id, user_id, resource_id,
                           (charged_at AT TIME ZONE 'UTC')::date, sum(su_amount),
                           sum(raw_unit_seconds), count(*)
                    FROM inserted GROUP BY 1, 2, 3, 4
                    {ROLLUP_ADD_CONFLICT}
                )
                SELECT allocation_id, user_id, count(*), sum(su_amount),
                       array_agg(DISTINCT job_id) FILTER (WHERE job_id = ANY(%s))
                FROM inserted GROUP BY allocation_id, user_id
                """,  # noqa: S608 (no user input in the statement)
                [self.cluster.pk, timezone.now(), *([skip] if skip else []), list(hold_jobs)],
            )
            rows = cursor.fetchall()
        inserted = {(a, u): (n, su) for a, u, n, su, _ in rows}
        charged = {job for *_, jobs in rows for job in jobs or ()}
        return inserted, charged

    def close(self) -> None:
        if self.staged is not None:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP TABLE {STAGE}")
            self.staged = None


class OrmStore:
    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.charges: list[tuple] = []

    def stage(self, charges: list[tuple]) -> None:
        self.charges = charges

    def open_holds(self) -> list[Hold]:
        return list(
            Hold.objects.filter(
                cluster=self.cluster,
                state=Hold.State.OPEN,
                job_id__in={c[1] for c in self.charges},
            )
        )

    def known(self) -> Known:
        usage = Usage.objects.filter(cluster=self.cluster, job_id__in={c[1] for c in self.charges})
        states = charge_states(usage)
        by_key = {
            (job_id, resource_id, user_id): states[pk]
            for pk, job_id, resource_id, user_id in usage.values_list(
                "pk", "job_id", "resource_id", "user_id"
            )
        }
        known = {}
        for charge in self.charges:
            state = by_key.get((charge[1], charge[4], charge[2]))
            if state is not None:
                known[charge[0]] = state
        return [], known

    def insert(self, known: Known, hold_jobs: set[str]) -> tuple[Inserted, set[str]]:
        rows = [
            Usage(
                cluster=self.cluster,
                job_id=job_id,
                user_id=user_id,
                allocation_id=allocation_id,
                resource_id=resource_id,
                raw_unit_seconds=raw,
                rate_id=rate_id,
                su_amount=su,
                charged_at=charged_at,
                started_at=started_at,
                ended_at=ended_at,
            )
            for (
                index,
                job_id,
                user_id,
                allocation_id,
                resource_id,
                raw,
                rate_id,
                su,
                charged_at,
                started_at,
                ended_at,
            ) in self.charges
            if index not in known[1]
        ]
        Usage.objects.bulk_create(rows, batch_size=2000)
        sums: dict[tuple[int, int], list] = defaultdict(lambda: [0, Decimal(0)])
        deltas: dict[tuple, list] = defaultdict(lambda: [Decimal(0), Decimal(0), 0])
        for row in rows:
            entry = sums[(row.allocation_id, row.user_id)]
            entry[0] += 1
            entry[1] += row.su_amount
            day = row.charged_at.astimezone(dt.UTC).date()
            delta = deltas[(row.allocation_id, row.user_id, row.resource_id, day)]
            delta[0] += row.su_amount
            delta[1] += row.raw_unit_seconds
            delta[2] += 1
        rollups_add({key: tuple(value) for key, value in deltas.items()})
        inserted = {key: (n, su) for key, (n, su) in sums.items()}
        return inserted, {row.job_id for row in rows} & hold_jobs

    def close(self) -> None:
        self.charges = []
