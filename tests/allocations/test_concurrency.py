"""Real concurrency: threads, each on its own PostgreSQL connection and released
together by a barrier, race through the services. Afterwards the ledger has no drift
and the totals are exactly what the winners wrote; the losers get a refusal, never a
database error.

Where a race needs one exact interleaving, a thread keeps its transaction open and
the test waits until the other thread's backend is blocked on a lock
(pg_stat_activity), so the outcome does not depend on timing luck.
"""

import datetime as dt
import io
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import User
from accounts.services import organization_create
from allocations import services
from allocations.adjustments import rate_correct, rerate_usage, usage_refund
from allocations.admission import AdmissionRefused, hold_create, hold_release
from allocations.conversion import su_for
from allocations.ledger import ledger_drift
from allocations.models import (
    Allocation,
    AllocationChange,
    ChangeRequest,
    ChangeRequestEvent,
    Cluster,
    Hold,
    Membership,
    Rate,
    Resource,
    Usage,
    UsageAdjustment,
)
from tests.allocations.dbstate import in_thread, wait_until_blocked, waits_for_lock
from tests.conftest import RATE_START, make_user

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs PostgreSQL: SQLite has no row locks (select_for_update is a no-op; a "
        "writer locks the whole database), so these races cannot happen there",
    ),
    pytest.mark.django_db(transaction=True),
]

GPU_RATE = Decimal(2)  # SU per GPU-hour


@pytest.fixture(autouse=True)
def _verify_ledger_afterwards():
    """After every race, the same check operators run: verify_ledger fails on any drift."""
    yield
    call_command("verify_ledger", stdout=io.StringIO())


# --- a world built with the services (conftest's fixtures need the `db` fixture) ----------


@dataclass
class World:
    cluster: Cluster
    gpu: Resource
    allocation: Allocation
    alice: User  # the PI, no cap
    bob: User  # a member, capped when bob_cap is given
    dana: User  # the cluster's admin


def build_world(*, budget: str = "100", bob_cap: str | None = None) -> World:
    org = organization_create(name="State University")
    alice, bob, dana = (make_user(name, org) for name in ("alice", "bob", "dana"))
    cluster = Cluster.objects.create(name="gpu1")
    cluster.admins.add(dana)
    gpu = Resource.objects.create(cluster=cluster, name="GPU H200", kind="GPU", unit="GPU")
    services.rate_add(actor=None, resource=gpu, su_per_unit_hour=GPU_RATE, start=RATE_START)
    project = services.project_create(actor=alice, title="Protein folding", pi=alice)
    world = World(cluster, gpu, None, alice, bob, dana)
    world.allocation = add_allocation(world, project, "folding", budget)
    services.membership_add(actor=alice, allocation=world.allocation, user=bob, su_cap=bob_cap)
    return world


def add_allocation(world: World, project, name: str, budget: str) -> Allocation:
    """An ACTIVE allocation whose dates hold today, approved by dana."""
    today = timezone.now().date()
    request = services.allocation_request_create(
        actor=world.alice,
        project=project,
        cluster=world.cluster,
        name=name,
        resources=[world.gpu],
        su_amount=budget,
        start=today - dt.timedelta(days=30),
        end=today + dt.timedelta(days=365),
        justification="Training runs",
    )
    services.change_request_approve(actor=world.dana, request=request)
    return Allocation.objects.get(pk=request.allocation_id)


def job(world: World, user: User, job_id: str, gpu_hours, allocation=None):
    return services.UsageInput(
        job_id=job_id,
        user=user,
        allocation=allocation or world.allocation,
        resource=world.gpu,
        raw_unit_seconds=Decimal(str(gpu_hours)) * 3600,
        charged_at=timezone.now() - dt.timedelta(hours=1),
    )


# --- running calls at once ------------------------------------------------------------------


def race(fn: Callable, args: list) -> list:
    """Calls fn(arg) for every arg, each in its own thread on its own connection, all
    released at once. Returns, in the order of args, what each call returned or raised."""
    barrier = threading.Barrier(len(args))

    def run(arg):
        try:
            connection.ensure_connection()  # connect first, so the barrier is the start line
            barrier.wait(timeout=30)
            return fn(arg)
        except Exception as exc:  # the outcome under test
            return exc
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(args)) as pool:
        return list(pool.map(run, args))


class Paused:
    """Runs `before` in a thread inside a transaction that stays open until resume(),
    then commits: the thread's writes and row locks are in flight meanwhile."""

    def __init__(self, before: Callable[[], object]):
        self._started, self._go = threading.Event(), threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._future = self._pool.submit(self._run, before)
        assert self._started.wait(timeout=30), "the paused thread did not start"
        if self._future.done():
            self._future.result()  # it failed before pausing: say why

    def _run(self, before):
        try:
            with transaction.atomic():
                result = before()
                self._started.set()
                assert self._go.wait(timeout=30), "the paused thread was never resumed"
            return result
        finally:
            self._started.set()
            connection.close()

    def resume(self):
        self._go.set()
        try:
            return self._future.result(timeout=30)
        finally:
            self._pool.shutdown()


def lock_allocations(*allocations: Allocation) -> None:
    """The lock a usage batch takes on its allocations (of the rows themselves only)."""
    pks = [a.pk for a in allocations]
    list(Allocation.objects.select_for_update().filter(pk__in=pks).order_by("pk"))


# --- checks ---------------------------------------------------------------------------------


def totals(allocation: Allocation) -> tuple[Decimal, Decimal, Decimal]:
    allocation.refresh_from_db()
    return allocation.su_budget, allocation.su_used, allocation.su_held


def used_by_records(allocation: Allocation) -> Decimal:
    charged = Usage.objects.filter(allocation=allocation).aggregate(s=Sum("su_amount"))["s"]
    adjusted = UsageAdjustment.objects.filter(allocation=allocation).aggregate(s=Sum("su_delta"))
    return (charged or 0) + (adjusted["s"] or 0)


def kinds(outcomes: list) -> Counter:
    return Counter(type(o).__name__ for o in outcomes)


# --- a. holds racing for the last SUs -------------------------------------------------------


def test_holds_racing_for_the_last_sus_are_granted_only_as_far_as_the_budget_goes():
    world = build_world(budget="100")
    services.usage_record(cluster=world.cluster, record=job(world, world.alice, "past", 20))
    # 100 - 40 used leaves 60: eight holds of 7 SUs fit, the ninth does not.
    threads, per_thread, estimate = 8, 4, Decimal(7)

    def hold_several(t: int) -> list:
        outcomes = []
        for n in range(per_thread):
            try:
                hold, _ = hold_create(
                    cluster=world.cluster,
                    actor=None,
                    username="alice",
                    account="folding",
                    resource="GPU H200",
                    job_id=f"{t}-{n}",
                    estimate_su=estimate,
                )
                outcomes.append(hold)
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    outcomes = [o for batch in race(hold_several, list(range(threads))) for o in batch]

    assert kinds(outcomes) == {"Hold": 8, "AdmissionRefused": threads * per_thread - 8}
    refusals = {o.code for o in outcomes if isinstance(o, AdmissionRefused)}
    assert refusals == {"allocation_exhausted"}
    assert totals(world.allocation) == (100, 40, 56)
    assert Hold.objects.filter(state=Hold.State.OPEN).count() == 8
    assert ledger_drift() == []


def test_holds_racing_for_a_members_cap_never_take_the_member_past_it():
    world = build_world(budget="100", bob_cap="30")
    # 4 SU holds: the pool has room for 25 of them, bob's cap for 7 (28 SUs).
    people = ["alice"] * 4 + ["bob"] * 4

    def hold_several(t: int) -> list:
        outcomes = []
        for n in range(6):
            try:
                hold, _ = hold_create(
                    cluster=world.cluster,
                    actor=None,
                    username=people[t],
                    account="folding",
                    resource="GPU H200",
                    job_id=f"{t}-{n}",
                    estimate_su="4",
                )
                outcomes.append((people[t], hold))
            except Exception as exc:
                outcomes.append((people[t], exc))
        return outcomes

    outcomes = [o for batch in race(hold_several, list(range(len(people)))) for o in batch]

    granted = Counter(who for who, o in outcomes if isinstance(o, Hold))
    assert sum(granted.values()) == 25
    assert 1 <= granted["bob"] <= 7
    refused = {(who, o.code) for who, o in outcomes if not isinstance(o, Hold)}
    assert all(isinstance(o, (Hold, AdmissionRefused)) for _, o in outcomes)
    assert refused <= {
        ("alice", "allocation_exhausted"),
        ("bob", "allocation_exhausted"),
        ("bob", "member_cap_exhausted"),
    }
    bobs = Membership.objects.get(allocation=world.allocation, user=world.bob)
    assert bobs.su_held == 4 * granted["bob"] <= 30
    assert totals(world.allocation) == (100, 0, 100)
    assert ledger_drift() == []


# --- b. the same usage posted at once ---------------------------------------------------------


def test_the_same_usage_batch_posted_at_once_is_charged_once():
    world = build_world(budget="100")
    hours = ["1.5", "2", "0.25"]  # 3 + 4 + 0.5 SUs

    def post(_):
        batch = [job(world, world.alice, f"job-{i}", h) for i, h in enumerate(hours)]
        return services.usage_record_batch(cluster=world.cluster, records=batch)

    outcomes = race(post, list(range(8)))

    assert kinds(outcomes) == {"UsageBatchResult": 8}, outcomes
    assert sorted((o.created, o.duplicates) for o in outcomes) == [(0, 3)] * 7 + [(3, 0)]
    assert Usage.objects.count() == 3
    assert totals(world.allocation) == (100, Decimal("7.5"), 0)
    assert used_by_records(world.allocation) == Decimal("7.5")
    assert ledger_drift() == []


def test_batches_charging_two_allocations_in_opposite_orders_do_not_deadlock():
    world = build_world(budget="100")
    other = add_allocation(world, world.allocation.project, "folding-2", "100")

    def post(t: int):
        pair = [
            job(world, world.alice, f"{t}-a", 1, world.allocation),
            job(world, world.alice, f"{t}-b", 1, other),
        ]
        # Half the batches name the allocations in one order, half in the other.
        return services.usage_record_batch(cluster=world.cluster, records=pair[:: 1 - 2 * (t % 2)])

    outcomes = race(post, list(range(8)))

    assert [(o.created, o.duplicates) for o in outcomes] == [(2, 0)] * 8, outcomes
    assert totals(world.allocation) == (100, 16, 0)
    assert totals(other) == (100, 16, 0)
    assert ledger_drift() == []


def test_the_same_job_posted_for_two_allocations_at_once_is_charged_once():
    # The usage key (cluster, job, resource, user) does not name the allocation: locking
    # only the batch's allocations lets both batches insert, and the second one used to
    # fail on the unique constraint with an IntegrityError.
    world = build_world(budget="100")
    other = add_allocation(world, world.allocation.project, "folding-2", "100")

    def post(allocation):
        record = job(world, world.alice, "42", 1, allocation)
        return services.usage_record_batch(cluster=world.cluster, records=[record])

    # The first batch has written its row and not committed yet when the second checks
    # for existing rows: the second waits on the unique index, then the first commits.
    first = Paused(lambda: post(world.allocation))
    second, pid = in_thread(lambda: post(other))
    wait_until_blocked(pid, second)
    first.resume()
    outcome = second.result(timeout=30)

    if isinstance(outcome, Exception):
        raise outcome
    # What a sequential replay does: the job is charged once, the replay is a duplicate.
    assert (outcome.created, outcome.duplicates) == (0, 1)
    assert Usage.objects.count() == 1
    assert totals(world.allocation)[1] + totals(other)[1] == 2
    assert ledger_drift() == []


# --- c. one request approved at once by several admins -------------------------------------


def _more_sus(world: World) -> ChangeRequest:
    return services.change_request_submit(
        actor=world.alice, allocation=world.allocation, su_delta="50", justification="More runs"
    )


def test_a_request_approved_by_several_admins_at_once_is_approved_once():
    world = build_world(budget="100")
    request = _more_sus(world)

    def approve(_):
        mine = ChangeRequest.objects.get(pk=request.pk)
        return services.change_request_approve(actor=world.dana, request=mine)

    outcomes = race(approve, list(range(8)))

    assert kinds(outcomes) == {"AllocationChange": 1, "ValidationError": 7}, outcomes
    assert {o.code for o in outcomes if isinstance(o, ValidationError)} == {"not_pending"}
    assert AllocationChange.objects.filter(change_request=request).count() == 1
    assert request.events.filter(kind=ChangeRequestEvent.Kind.APPROVED).count() == 1
    request.refresh_from_db()
    assert (request.state, request.su_approved) == (ChangeRequest.State.APPROVED, 50)
    assert totals(world.allocation) == (150, 0, 0)
    assert ledger_drift() == []


def test_an_approval_racing_rejections_decides_the_request_once():
    world = build_world(budget="100")
    request = _more_sus(world)

    def decide(t: int):
        mine = ChangeRequest.objects.get(pk=request.pk)
        if t % 2:
            return services.change_request_reject(actor=world.dana, request=mine, reason="No")
        return services.change_request_approve(actor=world.dana, request=mine)

    outcomes = race(decide, list(range(8)))

    assert kinds(outcomes)["ValidationError"] == 7, outcomes
    assert {o.code for o in outcomes if isinstance(o, ValidationError)} == {"not_pending"}
    decisions = request.events.exclude(kind=ChangeRequestEvent.Kind.CREATED)
    assert decisions.count() == 1
    request.refresh_from_db()
    approved = request.state == ChangeRequest.State.APPROVED
    assert AllocationChange.objects.filter(change_request=request).count() == int(approved)
    assert totals(world.allocation) == (150 if approved else 100, 0, 0)
    assert ledger_drift() == []


# --- d. usage and refunds at once -----------------------------------------------------------


def test_usage_and_refunds_at_once_leave_totals_equal_to_their_records():
    world = build_world(budget="1000")
    # Eight jobs already charged: job p<i> ran i+1 GPU-hours, 2(i+1) SUs.
    services.usage_record_batch(
        cluster=world.cluster,
        records=[job(world, world.bob, f"p{i}", i + 1) for i in range(8)],
    )
    # Threads 0-3 post new jobs (3 GPU-hours each, 6 SUs); 4-7 refund p0-p3; 8 and 9
    # both refund p7.
    refund_of = {4: "p0", 5: "p1", 6: "p2", 7: "p3", 8: "p7", 9: "p7"}

    def work(t: int):
        if t in refund_of:
            return usage_refund(
                actor=world.dana, cluster=world.cluster, job_id=refund_of[t], reason="Node failure"
            )
        batch = [job(world, world.alice, f"n{t}-{k}", 3) for k in range(3)]
        return services.usage_record_batch(cluster=world.cluster, records=batch)

    outcomes = race(work, list(range(10)))

    assert kinds(outcomes) == {"UsageBatchResult": 4, "list": 5, "ValidationError": 1}, outcomes
    (loser,) = [o for o in outcomes if isinstance(o, ValidationError)]
    assert loser.message_dict == {"job_id": ["Job p7 has already been refunded."]}
    assert UsageAdjustment.objects.filter(usage__job_id="p7").count() == 1
    # 72 SUs charged before, minus p0-p3 (2+4+6+8) and p7 (16), plus 12 jobs of 6 SUs.
    assert totals(world.allocation) == (1000, Decimal(72 - 20 - 16 + 72), 0)
    assert used_by_records(world.allocation) == 108
    bobs = Membership.objects.get(allocation=world.allocation, user=world.bob)
    alices = Membership.objects.get(allocation=world.allocation, user=world.alice)
    assert (bobs.su_used, alices.su_used) == (36, 72)
    assert ledger_drift() == []


# --- usage arriving while its rate is corrected ---------------------------------------------


def test_usage_charged_while_its_rate_is_corrected_ends_at_the_corrected_rate():
    # A batch that read the rate's value without a lock the correction waits for, and
    # committed after the re-rating ran, used to keep the old charge for good.
    world = build_world(budget="100")
    rate = Rate.objects.get(resource=world.gpu)

    # Another writer holds the allocation; our batch has read the rate and waits for
    # the allocation's lock when an admin corrects the rate, and the re-rating runs as
    # soon as the correction commits (as its task does).
    in_flight = Paused(lambda: lock_allocations(world.allocation))
    ours, pid = in_thread(
        lambda: services.usage_record(
            cluster=world.cluster, record=job(world, world.alice, "7", 10)
        )
    )
    wait_until_blocked(pid, ours)

    def correct():
        correction = rate_correct(actor=world.dana, rate=rate, su_per_unit_hour="3", reason="Typo")
        return rerate_usage(correction=correction)

    correcting, correcting_pid = in_thread(correct)
    # Either the correction waits for our batch (its re-rating then sees our row), or it
    # and its re-rating finish first.
    waits_for_lock(correcting_pid, correcting)
    in_flight.resume()
    outcomes = ours.result(timeout=30), correcting.result(timeout=30)

    assert not any(isinstance(o, Exception) for o in outcomes), outcomes
    charge = Usage.objects.get(job_id="7")
    net = charge.su_amount + sum(a.su_delta for a in charge.adjustments.all())
    assert ledger_drift() == []
    assert net == su_for(charge.raw_unit_seconds, Decimal(3)) == 30


# --- releasing holds -------------------------------------------------------------------------


def test_releasing_a_hold_does_not_wait_for_a_release_on_another_allocation():
    # select_for_update() with first() kept Allocation's Meta.ordering, whose join on the
    # cluster put the cluster row under FOR UPDATE too: every release waited for the others.
    world = build_world(budget="100")
    other = add_allocation(world, world.allocation.project, "folding-2", "100")
    holds = [
        hold_create(
            cluster=world.cluster,
            actor=None,
            username="alice",
            account=allocation.name,
            resource="GPU H200",
            job_id=f"job-{allocation.name}",
            estimate_su="10",
        )[0]
        for allocation in (world.allocation, other)
    ]

    first = Paused(lambda: hold_release(hold=holds[0]))
    second, pid = in_thread(lambda: hold_release(hold=holds[1]))
    waited = waits_for_lock(pid, second)
    first.resume()
    second.result(timeout=30)

    assert Hold.objects.filter(state=Hold.State.RELEASED).count() == 2
    assert totals(world.allocation) == totals(other) == (100, 0, 0)
    assert ledger_drift() == []
    assert not waited, "the release on another allocation waited for the first one's locks"
