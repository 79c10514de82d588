"""Properties of the ledger under any sequence of writes.

A hypothesis state machine applies random admin budget diffs, usage batches (at times on
both sides of a rate change), holds and their releases, refunds and rate corrections
(each followed by its re-rating) to conftest's allocation, and keeps a model of what
every total must be. After every step the maintained totals equal the model and the
records, verify_ledger finds no drift, and a refused call changed nothing.

Each example runs inside a transaction that is rolled back at its end, so every example
starts from the same fixtures.
"""

import datetime as dt
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from accounts.models import User
from allocations import services
from allocations.adjustments import rate_correct, rerate_usage, usage_refund
from allocations.admission import AdmissionRefused, hold_create, hold_release, member_remaining
from allocations.conversion import SU_QUANTUM, su_for
from allocations.ledger import ledger_drift
from allocations.models import (
    Allocation,
    AllocationChange,
    Hold,
    Membership,
    Rate,
    RateCorrection,
    Resource,
    Usage,
    UsageAdjustment,
)

FEB = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
MAR = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)  # the GPU rate goes from 2 to 3 SU here
APR = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
JOBS = ["101", "102", "103", "104", "105"]
USERS = ["alice", "bob"]  # alice has no cap, bob a cap of 300 SUs
RESOURCES = ["GPU H200", "CPU"]

MACHINE_SETTINGS = settings(
    max_examples=50,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

sus = st.decimals(min_value=Decimal("0.0001"), max_value=600, places=4)
times = st.one_of(
    st.sampled_from([MAR - dt.timedelta(microseconds=1), MAR]),
    st.integers(min_value=0, max_value=int((APR - FEB).total_seconds()) - 1).map(
        lambda s: FEB + dt.timedelta(seconds=s)
    ),
)
records = st.tuples(
    st.sampled_from(JOBS),
    st.sampled_from(USERS),
    st.sampled_from(RESOURCES),
    st.decimals(min_value=0, max_value=360_000, places=3),  # up to 100 unit-hours
    times,
)


@dataclass(frozen=True)
class World:
    allocation: Allocation
    users: dict[str, User]
    resources: dict[str, Resource]
    dana: User  # the cluster's admin


@pytest.fixture
def world(allocation, alice, bob, dana, gpu, cpu) -> World:
    """conftest's allocation (1,000 SUs; alice uncapped, bob capped at 300), with the
    GPU rate going from 2 to 3 SU per GPU-hour at MAR, and dates that hold today."""
    services.rate_close(actor=dana, rate=gpu.rates.get(), end=MAR)
    services.rate_add(actor=dana, resource=gpu, su_per_unit_hour="3", start=MAR)
    services.allocation_change_apply(
        actor=None,
        allocation=allocation,
        end=timezone.now().date() + dt.timedelta(days=365),
        reason="Holds are judged today",
    )
    return World(allocation, {"alice": alice, "bob": bob}, {r.name: r for r in (gpu, cpu)}, dana)


# --- the model: what every total must be -----------------------------------------------------


@dataclass
class Charge:
    user: str
    raw: Decimal
    rate: int  # pk
    refunded: bool = False


@dataclass
class HeldSus:
    job: str
    user: str
    amount: Decimal
    open: bool = True


@dataclass
class Model:
    budget: Decimal
    caps: dict[str, Decimal | None]
    rates: dict[int, Decimal]  # rate pk -> SU per unit-hour now
    windows: dict[str, list[Rate]]  # resource name -> its rate windows
    charges: dict[tuple[str, str, str], Charge] = field(default_factory=dict)
    holds: dict[int, HeldSus] = field(default_factory=dict)

    def net(self, charge: Charge) -> Decimal:
        return Decimal(0) if charge.refunded else su_for(charge.raw, self.rates[charge.rate])

    def used(self, user: str | None = None) -> Decimal:
        return sum(
            (self.net(c) for c in self.charges.values() if user in (None, c.user)), Decimal(0)
        )

    def held(self, user: str | None = None) -> Decimal:
        return sum(
            (h.amount for h in self.holds.values() if h.open and user in (None, h.user)),
            Decimal(0),
        )

    def remaining(self) -> Decimal:
        return self.budget - self.used() - self.held()

    def rate_at(self, resource: str, when: dt.datetime) -> int:
        (rate,) = [
            r for r in self.windows[resource] if r.start <= when and (r.end is None or when < r.end)
        ]
        return rate.pk


def by_records(allocation: Allocation) -> dict[str | None, tuple[Decimal, Decimal]]:
    """(used, held) summed from the usage, adjustment and hold rows: per member by
    username, and for the whole allocation under None."""
    found: dict[str | None, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    sums = [
        (Usage.objects, "su_amount", 0),
        (UsageAdjustment.objects, "su_delta", 0),
        (Hold.objects.filter(state=Hold.State.OPEN), "su_amount", 1),
    ]
    for rows, column, which in sums:
        per_user = (
            rows.filter(allocation=allocation)
            .values_list("user__username")
            .annotate(total=Sum(column))
            .order_by()
        )
        for username, total in per_user:
            # SQLite hands sums back as unscaled floats; the ledger's scale recovers them.
            amount = Decimal(total).quantize(SU_QUANTUM)
            found[username][which] += amount
            found[None][which] += amount
    return {key: (used, held) for key, (used, held) in found.items()}


def ledger_snapshot() -> tuple:
    """Every maintained total and every ledger row count and state."""
    return (
        list(
            Allocation.objects.order_by("pk").values_list(
                "su_budget", "su_used", "su_held", "status", "end"
            )
        ),
        list(Membership.objects.order_by("pk").values_list("su_used", "su_held", "su_cap")),
        list(Rate.objects.order_by("pk").values_list("su_per_unit_hour", "end")),
        list(Hold.objects.order_by("pk").values_list("state", flat=True)),
        [m.objects.count() for m in (AllocationChange, Usage, UsageAdjustment, RateCorrection)],
    )


@contextmanager
def refused(exception: type[Exception]):
    """The call is refused with `exception` and leaves the ledger as it was."""
    before = ledger_snapshot()
    with pytest.raises(exception) as excinfo:
        yield excinfo
    assert ledger_snapshot() == before, "a refused call changed the ledger"


@contextmanager
def rolled_back():
    """One example's writes, undone at its end: the next example starts from the fixtures."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


# --- the machine ------------------------------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    world: World  # set by the test
    holds = Bundle("holds")

    def __init__(self):
        super().__init__()
        self._example = ExitStack()
        self._example.enter_context(rolled_back())  # closed in teardown
        self.allocation = Allocation.objects.select_related("cluster").get(
            pk=self.world.allocation.pk
        )
        self.cluster = self.allocation.cluster
        self.unchanged = False
        self.users = self.world.users
        self.resources = self.world.resources
        caps = dict(
            Membership.objects.filter(allocation=self.allocation).values_list(
                "user__username", "su_cap"
            )
        )
        windows = {
            name: list(Rate.objects.filter(resource=resource).order_by("start"))
            for name, resource in self.resources.items()
        }
        self.model = Model(
            budget=self.allocation.su_budget,
            caps=caps,
            rates={r.pk: r.su_per_unit_hour for rates in windows.values() for r in rates},
            windows=windows,
        )

    @contextmanager
    def refused(self, exception: type[Exception]):
        with refused(exception) as excinfo:
            yield excinfo
        self.unchanged = True  # proven: the drift check after this step can be skipped

    def teardown(self):
        self._example.close()

    # --- admin budget diffs

    @rule(delta=st.one_of(sus, sus.map(lambda d: -d), st.just(Decimal(0))))
    def change_the_budget(self, delta):
        model = self.model
        new_budget = model.budget + delta
        # A cut may not take back SUs used or held for running jobs (services._apply_change).
        committed = model.used() + model.held()
        allowed = delta != 0 and new_budget >= 0 and (delta > 0 or new_budget >= committed)
        call = lambda: services.allocation_change_apply(  # noqa: E731
            actor=self.world.dana, allocation=self.allocation, su_delta=delta, reason="Adjusted"
        )
        if not allowed:
            with self.refused(ValidationError):
                call()
            return
        change = call()
        assert (change.su_delta, change.su_budget) == (delta, new_budget)
        model.budget = new_budget

    # --- usage

    @rule(batch=st.lists(records, min_size=1, max_size=3))
    def record_usage(self, batch):
        model = self.model
        # A job reported again comes with the amount it was charged for: a retry, counted as
        # a duplicate. Reports with another amount (importer corrections) have their own
        # test below, since a rate correction does not keep them yet.
        batch = [
            (job, user, resource, known.raw if known else raw, when)
            for job, user, resource, raw, when in batch
            for known in [model.charges.get((job, resource, user))]
        ]
        keys = [(job, resource, user) for job, user, resource, _, _ in batch]
        inputs = [
            services.UsageInput(
                job_id=job,
                user=self.users[user],
                allocation=self.allocation,
                resource=self.resources[resource],
                raw_unit_seconds=raw,
                charged_at=when,
            )
            for job, user, resource, raw, when in batch
        ]
        call = lambda: services.usage_record_batch(cluster=self.cluster, records=inputs)  # noqa: E731
        if len(set(keys)) < len(keys):
            with self.refused(services.BatchRejected):
                call()
            return
        result = call()
        new = {
            key: Charge(user, raw, model.rate_at(resource, when))
            for key, (_, user, resource, raw, when) in zip(keys, batch, strict=True)
            if key not in model.charges
        }
        charged = sum((model.net(c) for c in new.values()), Decimal(0))
        assert (result.created, result.duplicates, result.su_charged) == (
            len(new),
            len(batch) - len(new),
            charged,
        )
        model.charges |= new
        # A job's new usage settles its open hold.
        for held in model.holds.values():
            if held.open and held.job in {job for job, _, _ in new}:
                held.open = False

    # --- holds

    @rule(
        target=holds,
        user=st.sampled_from(USERS),
        job=st.sampled_from(JOBS),
        resource=st.sampled_from(RESOURCES),
        estimate=st.one_of(st.decimals(min_value=0, max_value=400, places=4), sus),
    )
    def place_a_hold(self, user, job, resource, estimate):
        model = self.model
        cap = model.caps[user]
        # A retried hold hears that it exists before anything about the balance.
        if any(h.open and h.job == job for h in model.holds.values()):
            expected = "hold_exists"
        elif estimate > model.remaining():
            expected = "allocation_exhausted"
        elif cap is not None and estimate > cap - model.used(user) - model.held(user):
            expected = "member_cap_exhausted"
        elif estimate <= 0:
            expected = "invalid"  # a plain ValidationError: a hold needs a positive estimate
        else:
            expected = None
        call = lambda: hold_create(  # noqa: E731
            cluster=self.cluster,
            actor=None,
            username=user,
            account=self.allocation.name,
            resource=resource,
            job_id=job,
            estimate_su=estimate,
        )
        if expected is not None:
            with self.refused(ValidationError) as refusal:
                call()
            if expected == "invalid":
                assert not isinstance(refusal.value, AdmissionRefused)
            else:
                assert refusal.value.code == expected
            return multiple()
        hold, admission = call()
        assert admission.allowed and hold.su_amount == estimate
        model.holds[hold.pk] = HeldSus(job, user, estimate)
        # A hold is granted only within the budget and within the member's cap.
        allocation = Allocation.objects.get(pk=self.allocation.pk)
        assert allocation.su_used + allocation.su_held <= allocation.su_budget
        member = Membership.objects.get(allocation=allocation, user__username=user)
        if member.su_cap is not None:
            assert member.su_used + member.su_held <= member.su_cap
        return hold.pk

    @rule(pk=holds)
    def release_a_hold(self, pk):
        hold = Hold.objects.get(pk=pk)
        if not self.model.holds[pk].open:
            with self.refused(ValidationError) as refusal:
                hold_release(hold=hold)
            assert refusal.value.code == "hold_not_open"
            return
        assert hold_release(hold=hold).state == Hold.State.RELEASED
        self.model.holds[pk].open = False

    # --- refunds

    @rule(job=st.sampled_from(JOBS), user=st.sampled_from([None, *USERS]))
    def refund_a_job(self, job, user):
        model = self.model
        keys = [k for k, c in model.charges.items() if k[0] == job and user in (None, c.user)]
        call = lambda: usage_refund(  # noqa: E731
            actor=self.world.dana,
            cluster=self.cluster,
            job_id=job,
            username=user,
            reason="Node failure",
        )
        if not keys or any(model.charges[k].refunded for k in keys):
            with self.refused(ValidationError):
                call()
            return
        adjustments = call()
        refunded = sum((model.net(model.charges[k]) for k in keys), Decimal(0))
        assert len(adjustments) == len(keys)
        assert sum(a.su_delta for a in adjustments) == -refunded
        for key in keys:
            model.charges[key].refunded = True

    # --- rate corrections and their re-rating

    @rule(
        window=st.sampled_from([("GPU H200", 0), ("GPU H200", 1), ("CPU", 0)]),
        value=st.decimals(min_value=0, max_value=5, places=2),
    )
    def correct_a_rate(self, window, value):
        model = self.model
        rate = model.windows[window[0]][window[1]]
        call = lambda: rate_correct(  # noqa: E731
            actor=self.world.dana, rate=rate, su_per_unit_hour=value, reason="Typo"
        )
        if value == model.rates[rate.pk]:
            with self.refused(ValidationError):
                call()
            return
        correction = call()
        # In production the task runs on commit; the test's transaction never commits.
        written = rerate_usage(correction=correction)
        changed = [
            c
            for c in model.charges.values()
            if c.rate == rate.pk and not c.refunded and su_for(c.raw, value) != model.net(c)
        ]
        assert written == len(changed)
        model.rates[rate.pk] = value
        assert rerate_usage(correction=correction) == 0, "a re-run wrote more adjustments"

    # --- refusals for people who may not

    @rule(action=st.sampled_from(["budget", "refund", "rate"]), user=st.sampled_from(USERS))
    def a_member_tries_an_admins_write(self, action, user):
        actor = self.users[user]
        calls = {
            "budget": lambda: services.allocation_change_apply(
                actor=actor, allocation=self.allocation, su_delta="100", reason="Please"
            ),
            "refund": lambda: usage_refund(
                actor=actor, cluster=self.cluster, job_id=JOBS[0], reason="Please"
            ),
            "rate": lambda: rate_correct(
                actor=actor,
                rate=self.model.windows["CPU"][0],
                su_per_unit_hour="9",
                reason="Please",
            ),
        }
        with self.refused(PermissionDenied):
            calls[action]()

    # --- after every step

    @invariant()
    def the_totals_equal_the_model_and_the_records(self):
        model = self.model
        allocation = Allocation.objects.get(pk=self.allocation.pk)
        assert allocation.su_budget >= 0
        assert (allocation.su_budget, allocation.su_used, allocation.su_held) == (
            model.budget,
            model.used(),
            model.held(),
        )
        assert allocation.su_remaining == model.budget - model.used() - model.held()
        records = by_records(allocation)
        zero = (Decimal(0), Decimal(0))
        assert (allocation.su_used, allocation.su_held) == records.get(None, zero)
        members = Membership.objects.filter(allocation=allocation).select_related("user")
        for member in members:
            name = member.user.username
            assert (member.su_used, member.su_held) == (model.used(name), model.held(name))
            assert (member.su_used, member.su_held) == records.get(name, zero)
            # What admission tells the scheduler the member may still use.
            left = model.remaining()
            if model.caps[name] is not None:
                left = min(model.caps[name] - model.used(name) - model.held(name), left)
            assert member_remaining(allocation, member) == left

    @invariant()
    def verify_ledger_finds_no_drift(self):
        if not self.unchanged:
            assert ledger_drift() == []
        self.unchanged = False


def test_the_ledger_keeps_its_invariants_through_any_sequence_of_writes(world):
    machine = type("LedgerMachineOnTheWorld", (LedgerMachine,), {"world": world})
    run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)


# --- a job reported again with another amount ------------------------------------------------


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@example(first=Decimal(36000), second=Decimal(18000), second_at=FEB, value=Decimal(4))
@given(
    first=st.decimals(min_value=0, max_value=360_000, places=3),
    second=st.decimals(min_value=0, max_value=360_000, places=3),
    second_at=st.sampled_from([FEB, MAR]),
    value=st.decimals(min_value=0, max_value=5, places=2),
)
def test_a_rate_correction_keeps_the_latest_report_of_a_job(world, first, second, second_at, value):
    allocation, alice, gpu = world.allocation, world.users["alice"], world.resources["GPU H200"]
    with rolled_back():
        for raw, when in ((first, FEB), (second, second_at)):
            services.usage_record(
                cluster=allocation.cluster,
                record=services.UsageInput(
                    job_id="101",
                    user=alice,
                    allocation=allocation,
                    resource=gpu,
                    raw_unit_seconds=raw,
                    charged_at=when,
                ),
            )
        # The latest report is the truth; an admin then corrects the rate it stands on. A
        # report of the same amount is a duplicate, so the job stays on its first rate.
        stands_at = second_at if second != first else FEB
        rate = Rate.objects.filter(resource=gpu, start__lte=stands_at).order_by("-start").first()
        assume(value != rate.su_per_unit_hour)
        rerate_usage(
            correction=rate_correct(
                actor=world.dana, rate=rate, su_per_unit_hour=value, reason="Typo"
            )
        )

        usage = Usage.objects.get(job_id="101")
        net = usage.su_amount + sum(a.su_delta for a in usage.adjustments.all())
        assert net == su_for(second, value)
        assert Allocation.objects.get(pk=allocation.pk).su_used == net
        assert ledger_drift() == []


# --- totals that come back to zero ---------------------------------------------------------


small_sus = st.decimals(min_value=Decimal("0.0001"), max_value=250, places=4)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@example(amounts=[Decimal("3.2076"), Decimal("2.3407")])
@given(amounts=st.lists(small_sus, min_size=1, max_size=4))
def test_jobs_charged_then_refunded_one_by_one_leave_exactly_nothing_used(world, amounts):
    # SQLite keeps these totals as binary floats: moved one amount at a time, 3.2076 +
    # 2.3407 - 3.2076 - 2.3407 used to leave -4.4e-16, which the >= 0 checks refused.
    allocation, alice = world.allocation, world.users["alice"]
    with rolled_back():
        for n, su in enumerate(amounts):
            services.usage_record(
                cluster=allocation.cluster,
                record=services.UsageInput(
                    job_id=f"job-{n}",
                    user=alice,
                    allocation=allocation,
                    resource=world.resources["GPU H200"],
                    raw_unit_seconds=su * 1800,  # 2 SU per GPU-hour in February
                    charged_at=FEB,
                ),
            )
        for n in range(len(amounts)):
            usage_refund(
                actor=world.dana, cluster=allocation.cluster, job_id=f"job-{n}", reason="Lost"
            )

        member = Membership.objects.get(allocation=allocation, user=alice)
        assert Allocation.objects.get(pk=allocation.pk).su_used == member.su_used == 0
        assert ledger_drift() == []


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@example(amounts=[Decimal("3.2076"), Decimal("2.3407")])
@given(amounts=st.lists(small_sus, min_size=1, max_size=4))
def test_holds_placed_then_released_one_by_one_leave_exactly_nothing_held(world, amounts):
    # As above, for su_held on SQLite.
    allocation = world.allocation
    with rolled_back():
        holds = [
            hold_create(
                cluster=allocation.cluster,
                actor=None,
                username="alice",
                account=allocation.name,
                resource="CPU",
                job_id=f"job-{n}",
                estimate_su=su,
            )[0]
            for n, su in enumerate(amounts)
        ]
        for hold in holds:
            hold_release(hold=hold)

        member = Membership.objects.get(allocation=allocation, user__username="alice")
        assert Allocation.objects.get(pk=allocation.pk).su_held == member.su_held == 0
        assert ledger_drift() == []


# --- budget cuts and holds ----------------------------------------------------------------------


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@example(held=Decimal(600), cut=Decimal(500))
@given(
    held=st.decimals(min_value=1, max_value=1000, places=4),
    cut=st.decimals(min_value=1, max_value=1000, places=4),
)
def test_a_budget_cut_never_takes_back_sus_that_open_holds_reserve(world, held, cut):
    allocation = world.allocation
    with rolled_back():
        hold_create(
            cluster=allocation.cluster,
            actor=None,
            username="alice",
            account=allocation.name,
            resource="CPU",
            job_id="101",
            estimate_su=held,
        )
        try:
            services.allocation_change_apply(
                actor=world.dana, allocation=allocation, su_delta=-cut, reason="Give back"
            )
        except ValidationError:
            return  # refusing the cut is the other correct answer
        after = Allocation.objects.get(pk=allocation.pk)
        assert after.su_remaining >= 0, (
            f"a cut of {cut} SUs left {after.su_remaining} SUs with {held} SUs held"
        )
