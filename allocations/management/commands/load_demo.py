import datetime as dt
import time
from argparse import ArgumentTypeError
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from functools import partial
from pathlib import Path
from unittest import mock

from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Organization, User
from accounts.roles import cluster_admins_group
from accounts.services import organization_create, user_create
from allocations import notifications, services
from allocations.demo import scenario
from allocations.demo.plan import Plan, approved_shares, plan_usage
from allocations.demo.scenario import (
    ADMIN,
    ADMIN_PASSWORD,
    ALLOCATIONS,
    CLUSTERS,
    DEMO_PASSWORD,
    ORGS,
    PEOPLE,
    PROJECTS,
    AllocationSpec,
    ClusterSpec,
    Comment,
    MemberSpec,
    ProjectSpec,
    RequestSpec,
    ResourceSpec,
    at,
    nice,
)
from allocations.demo.swf import read_swf
from allocations.models import (
    Allocation,
    AllocationChange,
    ChangeRequest,
    Cluster,
    Membership,
    Project,
    Rate,
    Resource,
    Status,
    Usage,
)
from allocations.rollups import rollups_refresh_all

SLICE = Path(scenario.__file__).with_name("lanl-cm5-slice.swf.gz")
BATCH_SIZE = 2000


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ArgumentTypeError(f"{value!r} is not a positive number")
    return int(value)


@contextmanager
def _clock(when: dt.datetime) -> Iterator[None]:
    """Runs services as if at `when`: they stamp rows with timezone.now(), and the demo
    replays six months of history, so each step carries the time it happened."""
    with mock.patch.object(timezone, "now", return_value=when):
        yield


def _already_loaded() -> str:
    if User.objects.filter(username=ADMIN.username).exists():
        return f"the user {ADMIN.username!r} exists"
    names = Q()
    for org in ORGS:
        names |= Q(name__iexact=org.name)
    if Organization.objects.filter(names).exists():
        return "the demo organizations exist"
    if Cluster.objects.filter(name__in=[c.name for c in CLUSTERS]).exists():
        return "the demo clusters exist"
    return ""


class Command(BaseCommand):
    help = (
        "Loads a deterministic demo site: 3 organizations, about 30 users, 10 projects, a CPU "
        "and a GPU cluster, rates with a mid-period change, allocations, members and requests "
        "in every state, and six months of usage replayed from a real job trace (LANL CM-5, "
        "Parallel Workloads Archive; see allocations/demo/README.md). The trace had no GPUs: "
        "GPU usage is a synthetic mapping of its CPU jobs. Does nothing if the demo is loaded."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--today",
            type=_date,
            help="The anchor date (YYYY-MM-DD, default: today in UTC): the trace ends at its "
            "midnight. The same date gives the same data.",
        )
        parser.add_argument(
            "--jobs",
            type=_positive,
            help="Use only this many trace jobs, spread evenly over the period "
            "(default: all of the slice's jobs).",
        )

    def handle(self, *args, today: dt.date | None = None, jobs: int | None = None, **options):
        loaded = _already_loaded()
        if loaded:
            self.stdout.write(f"The demo is already loaded ({loaded}); nothing to do.")
            return
        began = time.monotonic()
        today = today or dt.datetime.now(dt.UTC).date()
        anchor = dt.datetime.combine(today, dt.time.min, tzinfo=dt.UTC)
        trace = read_swf(SLICE)
        span = int(trace.field("SliceEndTime") or 0) - int(trace.field("SliceStartTime") or 0)
        if span != scenario.SPAN_DAYS * 86400:
            raise CommandError(f"{SLICE.name} does not span {scenario.SPAN_DAYS} days.")
        plan = plan_usage(trace, anchor=anchor, limit=jobs)
        self.stdout.write(
            f"Trace slice: {len(trace.jobs):,} jobs; {len(plan.charges):,} will be charged, "
            f"{plan.skipped:,} skipped (their user had no usable allocation at the time)."
        )
        with notifications.muted(), transaction.atomic():
            _Builder(plan, self.stdout.write).build()
        # The demo's usage went in below the ingestion hooks: build its rollups in one go.
        rollups_refresh_all()
        self._summary(time.monotonic() - began)

    def _summary(self, seconds: float) -> None:
        def by(model, field: str) -> str:
            values = Counter(model.objects.values_list(field, flat=True))
            parts = ", ".join(f"{n} {key.lower()}" for key, n in sorted(values.items()))
            return f"{values.total()} ({parts})"

        # Summed in Python: SQLite sums decimals as floats.
        charged = sum(Usage.objects.values_list("su_amount", flat=True), Decimal(0))
        stretched = [
            f"{a.name} {a.su_used / a.su_budget:.0%}"
            for a in Allocation.objects.filter(su_budget__gt=0).order_by("name")
            if a.su_used > a.su_budget * Decimal("0.9")
        ]
        write = self.stdout.write
        write(self.style.SUCCESS(f"Demo loaded in {seconds:.1f} s:"))
        write(f"  organizations: {Organization.objects.count()}")
        write(f"  users:         {User.objects.count()}")
        write(f"  projects:      {Project.objects.count()}")
        write(f"  clusters:      {Cluster.objects.count()} ({Resource.objects.count()} resources)")
        write(f"  allocations:   {by(Allocation, 'status')}")
        write(f"  over 90% used: {', '.join(stretched) or 'none'}")
        write(f"  memberships:   {by(Membership, 'status')}")
        write(f"  requests:      {by(ChangeRequest, 'state')}")
        write(f"  usage rows:    {Usage.objects.count():,}")
        write(f"  SUs charged:   {charged:,}")
        write(f"Sign in as (every other demo user's password is also {DEMO_PASSWORD}):")
        write(f"  staff:         {ADMIN.username} / {ADMIN_PASSWORD}")
        write(f"  PI:            {scenario.SAMPLE_PI} / {DEMO_PASSWORD}")
        write(f"  cluster admin: {scenario.SAMPLE_CLUSTER_ADMIN} / {DEMO_PASSWORD}")


class _Builder:
    """Writes the scenario through the services, replaying its events and the trace's
    usage in time order."""

    def __init__(self, plan: Plan, write: Callable[[str], None]):
        self.plan = plan
        self.anchor = plan.anchor
        self.write = write
        self.users: dict[str, User] = {}
        self.resources: dict[tuple[str, str], Resource] = {}
        self.first_rates: dict[tuple[str, str], Rate] = {}
        self.projects: dict[str, Project] = {}
        self.allocations: dict[str, Allocation] = {}
        self.requests: dict[tuple[str, int], int] = {}
        self.events: list[tuple[dt.timedelta, int, Callable[[], None]]] = []
        self.charged = self.next_report = 0

    def build(self) -> None:
        with _clock(self.anchor + at(scenario.RATES_FROM - 30, 9)):
            self._people()
        with _clock(self.anchor + at(scenario.RATES_FROM - 15, 10)):
            self._clusters()
        self._schedule()
        self._replay()

    # --- people and clusters ------------------------------------------------------------

    def _people(self) -> None:
        orgs = {o.key: organization_create(name=o.name) for o in ORGS}
        domains = {o.key: o.domain for o in ORGS}
        for person in (ADMIN, *PEOPLE):
            self.users[person.username] = user_create(
                username=person.username,
                email=person.email(domains[person.org]),
                first_name=person.first,
                last_name=person.last,
                organization=orgs[person.org],
                is_staff=person is ADMIN,
                is_superuser=person is ADMIN,
            )
        # One hash for everyone: hashing 30 passwords one by one costs about ten seconds.
        joined = timezone.now()
        people = [self.users[p.username].pk for p in PEOPLE]
        User.objects.filter(pk__in=people).update(
            password=make_password(DEMO_PASSWORD), date_joined=joined
        )
        User.objects.filter(pk=self.users[ADMIN.username].pk).update(
            password=make_password(ADMIN_PASSWORD), date_joined=joined
        )
        self.write(f"Created {len(ORGS)} organizations and {len(self.users)} users.")

    def _clusters(self) -> None:
        # No service creates clusters or resources yet; full_clean keeps the model's rules.
        for spec in CLUSTERS:
            cluster = Cluster(
                name=spec.name,
                title=spec.title,
                description=spec.description,
                su_capacity_per_month=spec.su_capacity_per_month,
            )
            cluster.full_clean()
            cluster.save()
            admins = [self.users[u] for u in spec.admins]
            cluster.admins.set(admins)
            # As README's Roles say a cluster admin is set up: the admin site opens
            # for them (is_staff and the group), showing their clusters' rows alone.
            group = cluster_admins_group()
            for admin in admins:
                if not admin.is_staff:
                    admin.is_staff = True
                    admin.save(update_fields=["is_staff"])
                admin.groups.add(group)
            for r in spec.resources:
                resource = Resource(
                    cluster=cluster, name=r.name, kind=r.kind, unit=r.unit, amount=r.amount
                )
                resource.full_clean()
                resource.save()
                self.resources[(spec.name, r.name)] = resource
                self.first_rates[(spec.name, r.name)] = services.rate_add(
                    actor=self.users[spec.admins[0]],
                    resource=resource,
                    su_per_unit_hour=r.rate,
                    start=self.anchor + at(scenario.RATES_FROM),
                    reason="Rate at launch.",
                )
        self.write(f"Created {len(CLUSTERS)} clusters with {len(self.resources)} resources.")

    # --- the story ----------------------------------------------------------------------

    def _on(self, offset: dt.timedelta, action: Callable, *args) -> None:
        self.events.append((offset, len(self.events), partial(action, *args)))

    def _schedule(self) -> None:
        for spec in CLUSTERS:
            for r in spec.resources:
                if r.rate_after != r.rate:
                    self._on(at(scenario.RATE_CHANGE_ANNOUNCED, 11), self._change_rate, spec, r)
        for project in PROJECTS:
            self._on(project.created, self._project, project)
        for spec in ALLOCATIONS:
            for index, request in enumerate((spec.new, *spec.requests)):
                self._on(request.when, self._submit, spec, index, request)
                for comment in request.comments:
                    self._on(comment.when, self._comment, spec, index, comment)
                if request.decision != "PENDING":
                    self._on(request.decided, self._decide, spec, index, request)
            if spec.members_added is not None:
                self._on(spec.members_added, self._add_members, spec)
            for member in spec.members:
                if member.cap_raised is not None:
                    self._on(member.cap_raised, self._raise_cap, spec, member)
                if member.frozen is not None:
                    self._on(member.frozen, self._freeze_member, spec, member)
            if spec.frozen is not None:
                self._on(spec.frozen[0], self._freeze, spec)
            if spec.closed is not None:
                self._on(spec.closed, self._close, spec)

    def _replay(self) -> None:
        self.events.sort(key=lambda e: (e[0], e[1]))
        done = 0
        for offset, _, action in self.events:
            done = self._charge_until(done, self.anchor + offset)
            with _clock(self.anchor + offset):
                action()
        self._charge_until(done, self.anchor)

    def _change_rate(self, cluster: ClusterSpec, r: ResourceSpec) -> None:
        admin = self.users[cluster.admins[0]]
        change = self.anchor + at(scenario.RATE_CHANGE)
        services.rate_close(
            actor=admin,
            rate=self.first_rates[(cluster.name, r.name)],
            end=change,
            reason=f"Replaced on {change:%Y-%m-%d}.",
        )
        services.rate_add(
            actor=admin,
            resource=self.resources[(cluster.name, r.name)],
            su_per_unit_hour=r.rate_after,
            start=change,
            reason=r.why_changed,
        )
        self.write(f"Rate change on {change:%Y-%m-%d}: {r.name} {r.rate} -> {r.rate_after} SU.")

    def _project(self, spec: ProjectSpec) -> None:
        pi = self.users[spec.pi]
        self.projects[spec.key] = project = services.project_create(
            actor=self.users[ADMIN.username] if spec.imported else pi,
            title=spec.title,
            pi=pi,
            description=spec.description,
            origination=spec.origination,
            originated_id=spec.originated_id,
        )
        for manager in spec.managers:
            services.project_add_manager(actor=pi, project=project, user=self.users[manager])

    def _allocation(self, spec: AllocationSpec) -> Allocation:
        # Fresh each time: services read status and budget from the instance they get.
        return Allocation.objects.select_related("project", "cluster").get(
            pk=self.allocations[spec.name].pk
        )

    def _request(self, spec: AllocationSpec, index: int) -> ChangeRequest:
        return ChangeRequest.objects.select_related(
            "allocation__project", "allocation__cluster"
        ).get(pk=self.requests[(spec.name, index)])

    def _granted(self, spec: AllocationSpec, index: int, request: RequestSpec) -> Decimal:
        shares = approved_shares(spec)
        if index == 0:
            return self.plan.amount(spec, shares[0]) if spec.used is not None else request.su
        return self.plan.amount(spec, request.granted or request.share)

    def _asked(self, spec: AllocationSpec, index: int, request: RequestSpec) -> Decimal | None:
        if request.su is not None:
            return request.su
        if request.share is not None:
            return self.plan.amount(spec, request.share)
        return self._granted(spec, index, request) if index == 0 else None

    def _submit(self, spec: AllocationSpec, index: int, request: RequestSpec) -> None:
        by = self.users[request.by]
        if index == 0:
            created = services.allocation_request_create(
                actor=by,
                project=self.projects[spec.project],
                cluster=Cluster.objects.get(name=spec.cluster),
                name=spec.name,
                resources=[self.resources[(spec.cluster, r)] for r in spec.resources],
                su_amount=self._asked(spec, index, request),
                start=(self.anchor + at(spec.start)).date(),
                end=(self.anchor + at(spec.end)).date(),
                justification=request.justification,
                priority=request.priority,
            )
            self.allocations[spec.name] = created.allocation
        else:
            allocation = self._allocation(spec)
            end = None
            if request.extend_days is not None:
                end = allocation.end + dt.timedelta(days=request.extend_days)
            created = services.change_request_submit(
                actor=by,
                allocation=allocation,
                justification=request.justification,
                su_delta=self._asked(spec, index, request),
                requested_status=request.status,
                requested_end=end,
                priority=request.priority,
            )
        self.requests[(spec.name, index)] = created.pk

    def _comment(self, spec: AllocationSpec, index: int, comment: Comment) -> None:
        services.change_request_comment(
            actor=self.users[comment.by], request=self._request(spec, index), text=comment.text
        )

    def _decide(self, spec: AllocationSpec, index: int, request: RequestSpec) -> None:
        actor, pending = self.users[request.decided_by], self._request(spec, index)
        if request.decision == "APPROVED":
            granted = None
            if pending.su_delta is not None:
                granted = self._granted(spec, index, request)
            services.change_request_approve(
                actor=actor, request=pending, su_approved=granted, reason=request.reason
            )
        elif request.decision == "REJECTED":
            services.change_request_reject(actor=actor, request=pending, reason=request.reason)
        else:
            services.change_request_cancel(actor=actor, request=pending, reason=request.reason)

    def _cap(self, spec: AllocationSpec, member: MemberSpec, budget: Decimal, *, final: bool):
        used = self.plan.member_used[(spec.name, member.username)]
        # Nobody sets a cap of a few SUs: a light user still gets a twentieth of the pool.
        cap = max(nice(used / member.cap_used), nice(budget / 20))
        if member.cap_raised is not None and not final:
            cap = nice(cap * Decimal("0.6"))
        # A cap above the budget is refused: at most the whole pool.
        return min(cap, budget)

    def _pi(self, spec: AllocationSpec) -> User:
        return self.users[next(p.pi for p in PROJECTS if p.key == spec.project)]

    def _add_members(self, spec: AllocationSpec) -> None:
        allocation = self._allocation(spec)
        for member in spec.members:
            cap = None
            if member.cap_used is not None:
                cap = self._cap(spec, member, allocation.su_budget, final=False)
            services.membership_add(
                actor=self._pi(spec),
                allocation=allocation,
                user=self.users[member.username],
                su_cap=cap,
            )

    def _membership(self, spec: AllocationSpec, member: MemberSpec) -> Membership:
        return Membership.objects.select_related("allocation__project", "allocation__cluster").get(
            allocation=self.allocations[spec.name], user=self.users[member.username]
        )

    def _raise_cap(self, spec: AllocationSpec, member: MemberSpec) -> None:
        membership = self._membership(spec, member)
        cap = self._cap(spec, member, self._allocation(spec).su_budget, final=True)
        if cap != membership.su_cap:
            services.membership_set_cap(
                actor=self._pi(spec),
                membership=membership,
                su_cap=cap,
                reason="Raised after the supplement.",
            )

    def _freeze_member(self, spec: AllocationSpec, member: MemberSpec) -> None:
        services.membership_set_status(
            actor=self._pi(spec),
            membership=self._membership(spec, member),
            status=Status.INACTIVE,
            reason=member.why_frozen,
        )

    def _freeze(self, spec: AllocationSpec) -> None:
        _, by, why = spec.frozen
        services.allocation_change_apply(
            actor=self.users[by],
            allocation=self._allocation(spec),
            status=Status.INACTIVE,
            reason=why,
        )

    def _close(self, spec: AllocationSpec) -> None:
        allocation = self._allocation(spec)
        services.allocation_change_apply(
            actor=None,
            allocation=allocation,
            status=Status.DELETED,
            reason=f"Ended on {allocation.end}; closed by the expiry job.",
            kind=AllocationChange.Kind.EXPIRY,
        )

    # --- usage --------------------------------------------------------------------------

    def _charge_until(self, done: int, until: dt.datetime) -> int:
        """Charges the planned jobs that ended before `until`, in batches, each recorded
        as if imported right after its last job ended."""
        charges = self.plan.charges
        end = done
        while end < len(charges) and charges[end].ended_at < until:
            end += 1
        for first in range(done, end, BATCH_SIZE):
            batch = charges[first : min(first + BATCH_SIZE, end)]
            by_cluster = defaultdict(list)
            for c in batch:
                allocation = self.allocations[c.allocation]
                by_cluster[allocation.cluster].append(
                    services.UsageInput(
                        job_id=c.job_id,
                        user=self.users[c.username],
                        allocation=allocation,
                        resource=self.resources[(allocation.cluster.name, c.resource)],
                        raw_unit_seconds=Decimal(c.raw_unit_seconds),
                        charged_at=c.ended_at,
                        started_at=c.started_at,
                        ended_at=c.ended_at,
                    )
                )
            with _clock(batch[-1].ended_at):
                for cluster, records in by_cluster.items():
                    services.usage_record_batch(cluster=cluster, records=records)
            self.charged += len(batch)
            if self.charged >= self.next_report or self.charged == len(charges):
                self.write(
                    f"Usage: {self.charged:,} of {len(charges):,} jobs charged "
                    f"(up to {batch[-1].ended_at:%Y-%m-%d})."
                )
                self.next_report = self.charged + max(len(charges) // 10, 1)
        return end
