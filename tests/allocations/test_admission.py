import datetime as dt
import itertools
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from allocations import services
from allocations.admission import Reason, admission_check, charge_refusal
from allocations.conversion import su_for
from allocations.models import Allocation, Cluster, Membership, Project, Resource, Status
from tests.allocations.dbstate import unchanged
from tests.conftest import END, NOW, START, make_user, usage

MAR = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)
STATUSES = [Status.ACTIVE, Status.INACTIVE, Status.DELETED]
BOTH = "Give the estimate in SUs or as count and wall time, not both."
NEITHER = "Give estimate_su, or both count and wall_seconds."


def check(allocation, user, at=NOW, resource="GPU H200", **estimate):
    return admission_check(
        cluster=allocation.cluster,
        username=user if isinstance(user, str) else user.username,
        account=allocation.name,
        resource=resource,
        at=at,
        **(estimate or {"estimate_su": "10"}),
    )


def refusal(allocation, user, at):
    """charge_refusal on the rows as the database has them."""
    allocation = Allocation.objects.select_related("project").get(pk=allocation.pk)
    membership = Membership.objects.get(allocation=allocation, user=user)
    return charge_refusal(
        project_status=allocation.project.status,
        allocation=allocation,
        membership=membership,
        at=at,
    )


def day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


@pytest.fixture
def bobs(allocation, bob):
    return Membership.objects.get(allocation=allocation, user=bob)


@pytest.fixture
def erin(allocation, alice, org):
    """A member who may charge only from April to May."""
    user = make_user("erin", org)
    services.membership_add(
        actor=alice,
        allocation=allocation,
        user=user,
        start=dt.date(2026, 4, 1),
        end=dt.date(2026, 5, 31),
    )
    return user


@pytest.fixture
def tpu(cluster):
    """A resource of the cluster, with a rate, that the allocation does not include."""
    resource = Resource.objects.create(cluster=cluster, name="TPU", kind="OTHER", unit="chip")
    services.rate_add(
        actor=None,
        resource=resource,
        su_per_unit_hour="1",
        start=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    )
    return resource


@pytest.fixture
def rate_change(gpu, dana):
    """The GPU rate goes from 2 to 3 SU per GPU-hour at MAR."""
    services.rate_close(actor=dana, rate=gpu.rates.get(), end=MAR)
    services.rate_add(actor=dana, resource=gpu, su_per_unit_hour="3", start=MAR)


class TestChargeRefusal:
    @pytest.mark.parametrize(
        ("project_status", "allocation_status", "membership_status"),
        list(itertools.product(STATUSES, repeat=3)),
    )
    def test_a_member_may_charge_only_when_all_three_levels_are_active(
        self,
        allocation,
        dana,
        alice,
        bob,
        bobs,
        project_status,
        allocation_status,
        membership_status,
    ):
        if membership_status != Status.ACTIVE:
            services.membership_set_status(actor=alice, membership=bobs, status=membership_status)
        if allocation_status != Status.ACTIVE:
            services.allocation_set_status(
                actor=dana, allocation=allocation, status=allocation_status, reason="Audit"
            )
        if project_status != Status.ACTIVE:
            services.project_set_status(
                actor=dana, project=allocation.project, status=project_status, reason="Audit"
            )

        expected = (
            Reason.PROJECT_INACTIVE
            if project_status != Status.ACTIVE
            else Reason.ALLOCATION_INACTIVE
            if allocation_status != Status.ACTIVE
            else Reason.MEMBERSHIP_INACTIVE
            if membership_status != Status.ACTIVE
            else None
        )
        assert refusal(allocation, bob, NOW) == expected
        result = check(allocation, bob)
        assert (result.allowed, result.reason) == (expected is None, expected)
        # Each level was changed on its own: the others kept their status.
        assert Project.objects.get(pk=allocation.project_id).status == project_status
        assert Allocation.objects.get(pk=allocation.pk).status == allocation_status
        assert Membership.objects.get(pk=bobs.pk).status == membership_status

    @pytest.mark.parametrize(
        ("at", "expected"),
        [
            pytest.param(
                day_start(START) - SECOND, Reason.ALLOCATION_NOT_STARTED, id="before-start"
            ),
            pytest.param(day_start(START), None, id="first-second"),
            pytest.param(day_start(END) + dt.timedelta(days=1) - SECOND, None, id="last-second"),
            pytest.param(
                day_start(END) + dt.timedelta(days=1), Reason.ALLOCATION_ENDED, id="after-end"
            ),
        ],
    )
    def test_the_allocation_dates_are_inclusive_days_in_utc(self, allocation, bob, at, expected):
        assert refusal(allocation, bob, at) == expected
        assert check(allocation, bob, at=at).reason == expected

    def test_a_time_given_in_another_zone_is_judged_in_utc(self, allocation, bob):
        # 00:30 on 1 January in UTC+2 is still 31 December in UTC.
        at = dt.datetime(2026, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))

        assert refusal(allocation, bob, at) == Reason.ALLOCATION_NOT_STARTED

    @pytest.mark.parametrize(
        ("at", "expected"),
        [
            pytest.param(
                dt.datetime(2026, 3, 31, 23, 59, 59, tzinfo=dt.UTC),
                Reason.MEMBERSHIP_NOT_STARTED,
                id="before-start",
            ),
            pytest.param(dt.datetime(2026, 4, 1, tzinfo=dt.UTC), None, id="first-day"),
            pytest.param(dt.datetime(2026, 5, 31, 23, 59, 59, tzinfo=dt.UTC), None, id="last-day"),
            pytest.param(
                dt.datetime(2026, 6, 1, tzinfo=dt.UTC), Reason.MEMBERSHIP_ENDED, id="after-end"
            ),
        ],
    )
    def test_the_membership_dates_are_inclusive_days(self, allocation, erin, at, expected):
        assert refusal(allocation, erin, at) == expected
        assert check(allocation, erin, at=at).reason == expected

    def test_an_open_membership_end_follows_the_allocation_end(self, allocation, bob, bobs, dana):
        after_end = day_start(END) + dt.timedelta(days=1)
        assert bobs.end is None
        assert refusal(allocation, bob, after_end) == Reason.ALLOCATION_ENDED

        services.allocation_change_apply(
            actor=dana, allocation=allocation, end=END + dt.timedelta(days=31), reason="Extended"
        )

        assert refusal(allocation, bob, after_end) is None
        assert check(allocation, bob, at=after_end).allowed

    def test_freezing_a_project_changes_no_allocation_row_and_unfreezing_restores_admission(
        self, allocation, dana, alice, bob, gpu
    ):
        services.usage_record_batch(
            cluster=allocation.cluster, records=[usage(allocation, bob, gpu, "1", 10)]
        )
        # alice was suspended before the freeze; unfreezing the project must not revive her.
        services.membership_set_status(
            actor=alice,
            membership=Membership.objects.get(allocation=allocation, user=alice),
            status=Status.INACTIVE,
        )
        allocations = list(Allocation.objects.order_by("pk").values())
        memberships = list(Membership.objects.order_by("pk").values())
        before = {u.username: vars(check(allocation, u)).copy() for u in (alice, bob)}

        services.project_set_status(
            actor=dana, project=allocation.project, status=Status.INACTIVE, reason="Audit"
        )

        assert list(Allocation.objects.order_by("pk").values()) == allocations
        assert list(Membership.objects.order_by("pk").values()) == memberships
        assert check(allocation, alice).reason == Reason.PROJECT_INACTIVE
        assert check(allocation, bob).reason == Reason.PROJECT_INACTIVE

        services.project_set_status(
            actor=dana, project=allocation.project, status=Status.ACTIVE, reason="Audit done"
        )

        after = {u.username: vars(check(allocation, u)).copy() for u in (alice, bob)}
        for name in ("alice", "bob"):
            for key in ("allowed", "reason", "estimate_su"):
                assert after[name][key] == before[name][key]
        assert before["alice"]["reason"] == Reason.MEMBERSHIP_INACTIVE
        assert before["bob"]["allowed"] is True
        assert check(allocation, bob).allocation_remaining == 980
        assert check(allocation, bob).member_remaining == 280
        assert list(Allocation.objects.order_by("pk").values()) == allocations
        assert list(Membership.objects.order_by("pk").values()) == memberships


class TestAdmissionCheck:
    def test_it_admits_a_member_and_reports_the_remaining_balances(
        self, allocation, alice, bob, gpu
    ):
        services.usage_record_batch(
            cluster=allocation.cluster, records=[usage(allocation, bob, gpu, "1", 10)]
        )

        bobs = check(allocation, bob, estimate_su="10")
        alices = check(allocation, alice, estimate_su="10")

        assert (bobs.allowed, bobs.reason, bobs.estimate_su) == (True, None, 10)
        assert (bobs.allocation_remaining, bobs.member_remaining) == (980, 280)
        assert (alices.allocation_remaining, alices.member_remaining) == (980, 980)
        assert bobs.message == "Admitted."

    def test_it_writes_nothing(self, allocation, bob):
        with unchanged():
            assert check(allocation, bob).allowed

    def test_it_names_the_resource_case_insensitively(self, allocation, bob):
        assert check(allocation, bob, resource="gpu h200").allowed

    @pytest.mark.parametrize(
        ("user", "account", "resource", "expected"),
        [
            ("nobody", "folding-gpu", "GPU H200", Reason.UNKNOWN_USER),
            ("bob", "no-such-account", "GPU H200", Reason.UNKNOWN_ALLOCATION),
            ("bob", "folding-gpu", "Quantum", Reason.UNKNOWN_RESOURCE),
            ("charlie", "folding-gpu", "GPU H200", Reason.NOT_A_MEMBER),
            ("bob", "folding-gpu", "TPU", Reason.RESOURCE_NOT_IN_ALLOCATION),
        ],
    )
    def test_it_refuses_names_that_do_not_resolve_with_their_reason(
        self, allocation, charlie, tpu, user, account, resource, expected
    ):
        result = admission_check(
            cluster=allocation.cluster,
            username=user,
            account=account,
            resource=resource,
            estimate_su="1",
            at=NOW,
        )

        assert (result.allowed, result.reason) == (False, expected)
        assert result.message  # every reason has a message to show

    def test_an_allocation_of_another_cluster_is_unknown_here(self, allocation, bob):
        other = Cluster.objects.create(name="cpu1")

        result = admission_check(
            cluster=other, username="bob", account=allocation.name, resource="CPU", estimate_su="1"
        )

        assert result.reason == Reason.UNKNOWN_ALLOCATION

    def test_it_refuses_a_resource_with_no_rate_in_force(self, allocation, bob, cpu, dana):
        services.rate_close(actor=dana, rate=cpu.rates.get(), end=MAR)

        assert check(allocation, bob, resource="CPU").reason == Reason.NO_RATE
        assert check(allocation, bob, resource="CPU", at=MAR - SECOND).allowed

    def test_it_refuses_an_estimate_beyond_the_allocation_remaining(
        self, allocation, alice, bob, gpu
    ):
        services.usage_record_batch(
            cluster=allocation.cluster, records=[usage(allocation, bob, gpu, "1", 10)]
        )

        assert check(allocation, alice, estimate_su="980").allowed
        refused = check(allocation, alice, estimate_su="980.0001")
        assert (refused.allowed, refused.reason) == (False, Reason.ALLOCATION_EXHAUSTED)
        assert refused.allocation_remaining == 980

    def test_it_refuses_an_estimate_beyond_the_member_cap(self, allocation, bob, gpu):
        services.usage_record_batch(
            cluster=allocation.cluster, records=[usage(allocation, bob, gpu, "1", 10)]
        )

        assert check(allocation, bob, estimate_su="280").allowed
        refused = check(allocation, bob, estimate_su="280.0001")
        assert (refused.allowed, refused.reason) == (False, Reason.MEMBER_CAP_EXHAUSTED)
        assert refused.member_remaining == 280

    def test_an_overdrawn_allocation_refuses_even_an_empty_estimate(self, allocation, alice, gpu):
        services.usage_record_batch(
            cluster=allocation.cluster, records=[usage(allocation, alice, gpu, "1", 600)]
        )

        refused = check(allocation, alice, estimate_su="0")

        assert refused.reason == Reason.ALLOCATION_EXHAUSTED
        assert refused.allocation_remaining == -200

    def test_the_status_rule_comes_before_the_balance(self, allocation, bob, dana):
        services.allocation_set_status(
            actor=dana, allocation=allocation, status=Status.INACTIVE, reason="Audit"
        )

        assert check(allocation, bob, estimate_su="5000").reason == Reason.ALLOCATION_INACTIVE

    @pytest.mark.parametrize(
        ("at", "rate"),
        [
            pytest.param(MAR - SECOND, Decimal(2), id="old-rate"),
            pytest.param(NOW, Decimal(3), id="new-rate"),
        ],
    )
    def test_an_estimate_as_count_and_wall_time_uses_the_rate_in_force(
        self, allocation, bob, rate_change, at, rate
    ):
        result = check(allocation, bob, at=at, count="4", wall_seconds="5400")

        assert result.estimate_su == su_for(Decimal(4 * 5400), rate) == 6 * rate
        assert result.rate.su_per_unit_hour == rate

    def test_an_estimate_as_count_and_wall_time_is_rounded_like_a_charge(self, allocation, bob):
        # 0.5 GPUs for 7 s at 2 SU per GPU-hour is 0.001944... SU.
        result = check(allocation, bob, count="0.5", wall_seconds=7)

        assert result.estimate_su == Decimal("0.0019") == su_for(Decimal("3.5"), Decimal(2))

    @pytest.mark.parametrize(
        ("estimate", "field"),
        [
            pytest.param({"estimate_su": "-1"}, "estimate_su", id="negative"),
            pytest.param({"estimate_su": "-0.0001"}, "estimate_su", id="slightly-negative"),
            pytest.param({"estimate_su": "abc"}, "estimate_su", id="non-numeric"),
            pytest.param({"estimate_su": "NaN"}, "estimate_su", id="NaN"),
            pytest.param({"estimate_su": "sNaN"}, "estimate_su", id="sNaN"),
            pytest.param({"estimate_su": "Infinity"}, "estimate_su", id="Infinity"),
            pytest.param({"estimate_su": "-Infinity"}, "estimate_su", id="-Infinity"),
            pytest.param({"estimate_su": 1.5}, "estimate_su", id="float"),
            pytest.param({"estimate_su": "1.00001"}, "estimate_su", id="too-many-places"),
            pytest.param({"estimate_su": "1e16"}, "estimate_su", id="too-large"),
            pytest.param({"estimate_su": True}, "estimate_su", id="bool"),
            pytest.param({"count": "-1", "wall_seconds": 60}, "count", id="negative-count"),
            pytest.param({"count": "0", "wall_seconds": 60}, "count", id="zero-count"),
            pytest.param({"count": "NaN", "wall_seconds": 60}, "count", id="NaN-count"),
            pytest.param({"count": 4.0, "wall_seconds": 60}, "count", id="float-count"),
            pytest.param({"count": "4", "wall_seconds": -60}, "wall_seconds", id="negative-wall"),
            pytest.param({"count": "4", "wall_seconds": 0}, "wall_seconds", id="zero-wall"),
            pytest.param({"count": "4", "wall_seconds": "Infinity"}, "wall_seconds", id="inf-wall"),
            pytest.param({"count": "4", "wall_seconds": 60.0}, "wall_seconds", id="float-wall"),
            pytest.param({"count": "4", "wall_seconds": "1.5"}, "wall_seconds", id="fraction-wall"),
            pytest.param({"count": "4", "wall_seconds": "x"}, "wall_seconds", id="text-wall"),
            pytest.param(
                {"estimate_su": "1", "count": "4", "wall_seconds": 60}, BOTH, id="both-forms"
            ),
            pytest.param({"estimate_su": "1", "count": "4"}, BOTH, id="su-and-count"),
            pytest.param({"estimate_su": None}, NEITHER, id="neither"),
            pytest.param({"count": "4"}, NEITHER, id="count-without-wall"),
            pytest.param({"wall_seconds": 60}, NEITHER, id="wall-without-count"),
        ],
    )
    def test_it_refuses_a_bad_estimate_before_reading_anything(
        self, allocation, bob, django_assert_num_queries, estimate, field
    ):
        allocation.cluster  # noqa: B018 (loaded here, so only the check's queries count)
        with django_assert_num_queries(0), pytest.raises(ValidationError) as excinfo:
            check(allocation, bob, **estimate)

        errors = excinfo.value
        if field in (BOTH, NEITHER):  # the estimate as a whole, not one field, is wrong
            assert not hasattr(errors, "error_dict")
            assert errors.messages == [field]
        else:
            assert list(errors.message_dict) == [field]

    def test_a_count_and_wall_time_too_large_to_be_real_are_refused(self, allocation, bob, dana):
        services.rate_close(
            actor=dana, rate=allocation.resources.get(kind="GPU").rates.get(), end=MAR
        )
        services.rate_add(
            actor=dana,
            resource=allocation.resources.get(kind="GPU"),
            su_per_unit_hour="1000000",
            start=MAR,
        )
        # Each number is within its own limits; their product in SUs is not.
        with pytest.raises(ValidationError) as excinfo:
            check(allocation, bob, count="999999999", wall_seconds="9999999999")

        assert "count" in excinfo.value.message_dict

    @pytest.mark.parametrize("jobs", [2, 200])
    def test_it_costs_one_query_whatever_the_usage(
        self, allocation, alice, bob, gpu, django_assert_max_num_queries, jobs
    ):
        services.usage_record_batch(
            cluster=allocation.cluster,
            records=[
                usage(allocation, bob if i % 2 else alice, gpu, str(i), "0.01") for i in range(jobs)
            ],
        )

        # The allocation with its project and whether it includes the resource, the
        # membership with its user, the resource's rate in force: one statement.
        with django_assert_max_num_queries(1):
            result = check(allocation, bob, count="2", wall_seconds=3600)

        assert result.allowed
        assert result.allocation_remaining == 1000 - Decimal("0.02") * jobs
