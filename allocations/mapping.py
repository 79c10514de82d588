"""From parsed scheduler jobs to usage records: which portal resource each TRES of a job is.

A cluster's TresMapping rows say that TRES `tres` (on `partition`, or on any partition when
blank) is usage of `resource`, `scale` resource units per TRES unit. A job's usage of a
resource is then

    raw_unit_seconds = TRES value x scale x elapsed seconds

summed over the job's TRES that map to that resource, and kept to RAW_PLACES decimal places
(half-even, the rounding rule of conversion.py) because that is what a Usage row stores.

GPUs are counted once: sacct names them untyped and typed (`gres/gpu=4,gres/gpu:h200=4`), so
typed entries are used when there are any and the untyped total only for GPUs no typed entry
accounts for (parsers.gpu_counts). TRES with no mapping (billing, node, ...) are ignored, but a
job none of whose TRES maps is an error: charging it nothing would hide a missing mapping.
"""

from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_EVEN, Context, Decimal

from allocations.models import RAW_PLACES, Cluster, Resource, TresMapping
from allocations.parsers import JobRecord, gpu_counts
from allocations.parsers.units import GPU

RAW_QUANTUM = Decimal(1).scaleb(-RAW_PLACES)
# Wide enough that no product is rounded before the one quantize.
_EXACT = Context(prec=60, rounding=ROUND_HALF_EVEN)


class MappingError(ValueError):
    """A job that cannot be turned into usage records; `field` names what is wrong with it."""

    def __init__(self, message: str, *, field: str = "tres"):
        self.field = field
        super().__init__(message)


def mappings_for(cluster: Cluster) -> list[TresMapping]:
    """A cluster's mappings with their resources (and cluster), in one query."""
    return list(TresMapping.objects.filter(cluster=cluster).select_related("resource", "cluster"))


def _entries(tres: dict[str, Decimal]) -> Iterable[tuple[str, Decimal]]:
    """The job's TRES with GPUs counted once, as (TRES name, value)."""
    for name, value in tres.items():
        if name != GPU and not name.startswith(GPU + ":"):
            yield name, value
    for model, count in gpu_counts(tres).items():
        yield (GPU if model is None else f"{GPU}:{model}"), count


def _cluster_name(job: JobRecord, mappings: Sequence[TresMapping]) -> str:
    if mappings:
        return mappings[0].cluster.name
    return job.cluster or "this cluster"


def job_usage(job: JobRecord, mappings: Sequence[TresMapping]) -> list[tuple[Resource, Decimal]]:
    """(resource, raw unit-seconds) for each resource the job used.

    `mappings` are one cluster's (mappings_for). For each TRES of the job the mapping for
    (job.partition, tres) wins over the one with a blank partition.
    """
    by_key = {(m.partition, m.tres): m for m in mappings}
    totals: dict[int, Decimal] = {}
    resources: dict[int, Resource] = {}
    for name, value in _entries(job.tres):
        # A zero entry (gres/gpu=0 on some sites) is no usage of anything.
        if not value:
            continue
        mapping = by_key.get((job.partition, name)) or by_key.get(("", name))
        if mapping is None:
            continue
        amount = _EXACT.multiply(_EXACT.multiply(value, mapping.scale), job.elapsed_seconds)
        resources[mapping.resource_id] = mapping.resource
        # Two TRES may map to one resource (two GPU models priced alike); a Usage row is
        # one per job and resource, so they are summed before rounding.
        totals[mapping.resource_id] = _EXACT.add(totals.get(mapping.resource_id, 0), amount)
    if not totals:
        names = ", ".join(sorted(job.tres)) or "none"
        where = f" on partition {job.partition}" if job.partition else ""
        raise MappingError(
            f"no TRES of job {job.job_id} ({names}){where} maps to a resource on cluster "
            f"{_cluster_name(job, mappings)}; configure TresMapping in the admin"
        )
    return [
        (resources[rid], total.quantize(RAW_QUANTUM, context=_EXACT))
        for rid, total in totals.items()
    ]


def usage_records(job: JobRecord, mappings: Sequence[TresMapping]) -> list[dict]:
    """The records ingest.usage_ingest accepts for one job, one per resource it used.

    Raises MappingError for a job that cannot be charged whatever the database holds: one of
    another cluster, with no user or account, not ended, or with no TRES that maps.
    """
    cluster = _cluster_name(job, mappings)
    if mappings and job.cluster and job.cluster != cluster:
        raise MappingError(
            f"job {job.job_id} ran on cluster {job.cluster}, not {cluster}", field="cluster"
        )
    if not job.user:
        raise MappingError(f"job {job.job_id} has no user", field="user")
    if not job.account:
        # SWF logs write -1 for an unknown group; ingest would refuse the whole batch.
        raise MappingError(f"job {job.job_id} has no account", field="allocation")
    if job.end is None:
        raise MappingError(f"job {job.job_id} has not ended", field="end")
    start, end = job.start.isoformat(), job.end.isoformat()
    return [
        {
            "job_id": job.job_id,
            "user": job.user,
            "allocation": job.account,
            "resource": resource.name,
            "raw_unit_seconds": str(raw),
            "start": start,
            "end": end,
            "charged_at": end,
        }
        for resource, raw in job_usage(job, mappings)
    ]


def job_records_to_usage(
    jobs: Iterable[JobRecord], mappings: Sequence[TresMapping]
) -> tuple[list[dict], list[dict]]:
    """Usage records for ingest.usage_ingest, and the jobs that give none as
    {"line", "job_id", "field", "reason"} (line: the job's line in its input)."""
    records: list[dict] = []
    errors: list[dict] = []
    for job in jobs:
        try:
            records.extend(usage_records(job, mappings))
        except MappingError as exc:
            errors.append(
                {"line": job.line, "job_id": job.job_id, "field": exc.field, "reason": str(exc)}
            )
    return records, errors
