"""The plan: which trace job is charged to which demo allocation, and so how many SUs each
allocation and member will have used at the anchor. It is pure (no database), and
load_demo chooses budgets and caps as shares of what it finds, which is how the demo gets a
healthy, a nearly spent and an overdrawn allocation whatever `--jobs` is.
"""

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from allocations.conversion import su_for
from allocations.demo.scenario import (
    ALLOCATIONS,
    CLUSTERS,
    PROJECTS,
    RATE_CHANGE,
    AllocationSpec,
    MemberSpec,
    ResourceSpec,
    at,
    nice,
)
from allocations.demo.swf import Trace

# The synthetic GPU mapping: the CM-5 had no GPUs. Jobs from these queues
# (scavenge_production, prod_long, benchmark) prefer the GPU cluster, and a job uses one
# GPU per 32 processors (the smallest CM-5 partition), at most one 8-GPU node; jobs of 4
# GPUs or more run on H200 and smaller ones on RTX 6000, when the allocation has both.
GPU_QUEUES = frozenset({5, 9, 10})
PROCS_PER_GPU = 32
GPUS_PER_NODE = 8
LARGE_GPU_JOB = 4


@dataclass(frozen=True)
class Charge:
    job_id: str
    username: str
    allocation: str
    resource: str
    raw_unit_seconds: int
    started_at: dt.datetime
    ended_at: dt.datetime
    su: Decimal


@dataclass
class Plan:
    anchor: dt.datetime
    charges: list[Charge]
    skipped: int
    used: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    member_used: dict[tuple[str, str], Decimal] = field(
        default_factory=lambda: defaultdict(Decimal)
    )

    def budget(self, spec: AllocationSpec) -> Decimal:
        """The budget that makes the planned usage the spec's share of it."""
        if spec.used is None:
            return spec.new.su or Decimal(0)
        # Too few jobs for this allocation (a small --jobs): any sensible budget will do.
        used = self.used[spec.name] or Decimal(100)
        return used / spec.used

    def amount(self, spec: AllocationSpec, share: Decimal) -> Decimal:
        return nice(self.budget(spec) * share)


def approved_shares(spec: AllocationSpec) -> list[Decimal]:
    """The share of the final budget each approved grant gives, the creating one first."""
    later = [
        r.granted if r.granted is not None else r.share
        for r in spec.requests
        if r.decision == "APPROVED" and r.share is not None
    ]
    return [Decimal(1) - sum(later, Decimal(0)), *later]


def _rate_at(resource: ResourceSpec, when: dt.datetime, anchor: dt.datetime) -> Decimal:
    return resource.rate if when < anchor + at(RATE_CHANGE) else resource.rate_after


def _resources() -> dict[tuple[str, str], ResourceSpec]:
    return {(c.name, r.name): r for c in CLUSTERS for r in c.resources}


def sample(jobs, limit: int | None):
    """`limit` jobs spread evenly over the trace, so a short demo still spans the period."""
    if limit is None or limit >= len(jobs):
        return list(jobs)
    return [jobs[i * len(jobs) // limit] for i in range(limit)]


def members_of(spec: AllocationSpec) -> list[MemberSpec]:
    pi = next(p.pi for p in PROJECTS if p.key == spec.project)
    return [MemberSpec(pi), *spec.members]


def plan_usage(trace: Trace, *, anchor: dt.datetime, limit: int | None = None) -> Plan:
    """Maps trace jobs onto demo allocations.

    Trace users, sorted, go round-robin onto the people who hold memberships. A job is
    charged where its user could charge at the job's end: an allocation that is approved,
    not frozen or closed, inside its dates, with the user's membership active. Jobs from
    GPU_QUEUES look on the GPU cluster first, the others on the CPU cluster first; among
    several allocations on a cluster the job number picks one. A job with nowhere to go
    is skipped, as the scheduler's admission check would have refused it.
    """
    slice_end = trace.field("SliceEndTime")
    if slice_end is None:
        raise ValueError("The trace has no SliceEndTime to anchor it on.")
    shift = int(anchor.timestamp()) - int(slice_end)
    origin = trace.origin

    charging: list[str] = sorted(
        {m.username for spec in ALLOCATIONS if spec.used is not None for m in members_of(spec)}
    )
    trace_users = sorted({job.user for job in trace.jobs})
    person_of = {uid: charging[i % len(charging)] for i, uid in enumerate(trace_users)}

    windows = defaultdict(list)  # username -> [(allocation spec, member spec)]
    for spec in ALLOCATIONS:
        for member in members_of(spec):
            windows[member.username].append((spec, member))
    pi_of = {spec.name: members_of(spec)[0].username for spec in ALLOCATIONS}
    resources = _resources()
    gpu_cluster = next(c.name for c in CLUSTERS if c.resources[0].kind == "GPU")

    def usable(spec: AllocationSpec, member: MemberSpec, when: dt.datetime) -> bool:
        offset = when - anchor
        if spec.new.decided is None or offset < spec.new.decided:
            return False
        if spec.inactive_from is not None and offset >= spec.inactive_from:
            return False
        # The PI is a member from the request on; the others are added after approval.
        if member.username != pi_of[spec.name] and offset < spec.members_added:
            return False
        if member.frozen is not None and offset >= member.frozen:
            return False
        return at(spec.start) <= offset < at(spec.end + 1)

    result = Plan(anchor=anchor, charges=[], skipped=0)
    for job in sample(trace.jobs, limit):
        if job.run <= 0 or job.procs <= 0:
            result.skipped += 1
            continue
        ended = dt.datetime.fromtimestamp(job.end(origin) + shift, dt.UTC)
        username = person_of[job.user]
        candidates = [(s, m) for s, m in windows[username] if usable(s, m, ended)]
        prefer_gpu = job.queue in GPU_QUEUES
        on_gpu = [(s, m) for s, m in candidates if s.cluster == gpu_cluster]
        on_cpu = [(s, m) for s, m in candidates if s.cluster != gpu_cluster]
        choice = (on_gpu or on_cpu) if prefer_gpu else (on_cpu or on_gpu)
        if not choice:
            result.skipped += 1
            continue
        spec, _ = choice[job.number % len(choice)]
        if spec.cluster == gpu_cluster:
            gpus = min(max(1, job.procs // PROCS_PER_GPU), GPUS_PER_NODE)
            model = "GPU H200" if gpus >= LARGE_GPU_JOB else "GPU RTX6000"
            resource = model if model in spec.resources else spec.resources[0]
            raw = job.run * gpus
        else:
            resource, raw = spec.resources[0], job.run * job.procs
        rate = _rate_at(resources[(spec.cluster, resource)], ended, anchor)
        su = su_for(Decimal(raw), rate)
        result.charges.append(
            Charge(
                job_id=str(job.number),
                username=username,
                allocation=spec.name,
                resource=resource,
                raw_unit_seconds=raw,
                started_at=ended - dt.timedelta(seconds=job.run),
                ended_at=ended,
                su=su,
            )
        )
        result.used[spec.name] += su
        result.member_used[(spec.name, username)] += su
    result.charges.sort(key=lambda c: (c.ended_at, int(c.job_id)))
    return result
