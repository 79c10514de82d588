import datetime as dt
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Sum

from allocations import services
from allocations.ledger import ledger_drift
from tests.allocations.dbstate import unchanged
from tests.conftest import START, usage


class TestAllocationChangeApply:
    def test_an_admin_tops_up_the_budget_with_a_diff(self, allocation, dana):
        change = services.allocation_change_apply(
            actor=dana, allocation=allocation, su_delta="250", reason="Conference deadline"
        )

        assert (change.kind, change.su_delta, change.su_budget, change.status) == (
            "ADMIN",
            250,
            1250,
            "",
        )
        assert (change.actor, change.reason, change.change_request) == (
            dana,
            "Conference deadline",
            None,
        )
        # The caller's object is refreshed, and the database agrees.
        assert allocation.su_budget == 1250
        allocation.refresh_from_db()
        assert allocation.su_budget == 1250

    def test_an_automated_workflow_writes_a_diff_without_an_actor(self, allocation):
        change = services.allocation_change_apply(
            actor=None, allocation=allocation, status="INACTIVE", reason="Expired", kind="EXPIRY"
        )

        assert (change.kind, change.actor, change.status, change.su_budget) == (
            "EXPIRY",
            None,
            "INACTIVE",
            1000,
        )
        assert allocation.status == "INACTIVE"

    def test_the_budget_is_what_the_diffs_say(self, allocation, dana):
        for delta in ("250", "-100.5", "0.0001"):
            services.allocation_change_apply(
                actor=dana, allocation=allocation, su_delta=delta, reason="Adjust"
            )

        changes = allocation.changes.order_by("created", "id")
        assert changes.aggregate(total=Sum("su_delta"))["total"] == allocation.su_budget
        assert changes.last().su_budget == allocation.su_budget == Decimal("1149.5001")
        budgets = [c.su_budget for c in changes]
        deltas = [c.su_delta for c in changes]
        assert all(budgets[i] == budgets[i - 1] + deltas[i] for i in range(1, len(budgets)))
        assert ledger_drift() == []

    def test_it_extends_the_end_date(self, allocation, dana):
        change = services.allocation_change_apply(
            actor=dana, allocation=allocation, end=dt.date(2027, 1, 31), reason="Extension"
        )

        assert change.end == allocation.end == dt.date(2027, 1, 31)

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
    def test_it_refuses_anyone_but_the_clusters_admins(self, request, allocation, who):
        actor = request.getfixturevalue(who)
        with unchanged(), pytest.raises(PermissionDenied):
            services.allocation_change_apply(
                actor=actor, allocation=allocation, su_delta="1", reason="Gift"
            )

    def test_it_requires_a_reason(self, allocation, dana):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.allocation_change_apply(
                actor=dana, allocation=allocation, su_delta="1", reason=""
            )
        assert "reason" in excinfo.value.message_dict

    def test_it_refuses_taking_back_used_sus(self, allocation, bob, dana, gpu):
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, bob, gpu, "1", 100)
        )
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.allocation_change_apply(
                actor=dana, allocation=allocation, su_delta="-800.0001", reason="Reclaim"
            )
        assert excinfo.value.message_dict == {
            "su_delta": [
                "At most 800.0000 unused SUs can be given back; "
                "200.0000 SUs are used and 0.0000 held."
            ]
        }

    def test_it_refuses_a_change_that_changes_nothing(self, allocation, dana):
        with unchanged(), pytest.raises(ValidationError, match="changes nothing"):
            services.allocation_change_apply(
                actor=dana, allocation=allocation, status="ACTIVE", reason="Again"
            )

    def test_it_refuses_an_end_before_the_start(self, allocation, dana):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.allocation_change_apply(
                actor=dana, allocation=allocation, end=START - dt.timedelta(days=1), reason="x"
            )
        assert "end" in excinfo.value.message_dict

    @pytest.mark.parametrize("delta", ["ten", 1.5, "Infinity", "0.00001"])
    def test_it_refuses_an_amount_that_is_not_an_exact_su_amount(self, allocation, dana, delta):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.allocation_change_apply(
                actor=dana, allocation=allocation, su_delta=delta, reason="x"
            )
        assert "su_delta" in excinfo.value.message_dict


class TestAllocationSetStatus:
    def test_an_admin_freezes_and_unfreezes_an_allocation(self, allocation, dana):
        services.allocation_set_status(
            actor=dana, allocation=allocation, status="INACTIVE", reason="Abuse report"
        )
        services.allocation_set_status(
            actor=dana, allocation=allocation, status="ACTIVE", reason="Resolved"
        )

        allocation.refresh_from_db()
        assert (allocation.status, allocation.su_budget) == ("ACTIVE", 1000)
        assert list(allocation.changes.values_list("kind", "status", "actor__username", "reason"))[
            -2:
        ] == [
            ("ADMIN", "INACTIVE", "dana", "Abuse report"),
            ("ADMIN", "ACTIVE", "dana", "Resolved"),
        ]

    def test_it_refuses_the_status_the_allocation_already_has(self, allocation, dana):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.allocation_set_status(
                actor=dana, allocation=allocation, status="ACTIVE", reason="On"
            )
        assert "status" in excinfo.value.message_dict

    def test_it_refuses_an_unknown_status(self, allocation, dana):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.allocation_set_status(
                actor=dana, allocation=allocation, status="FROZEN", reason="x"
            )
        assert "status" in excinfo.value.message_dict

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
    def test_it_refuses_anyone_but_the_clusters_admins(self, request, allocation, who):
        actor = request.getfixturevalue(who)
        with unchanged(), pytest.raises(PermissionDenied):
            services.allocation_set_status(
                actor=actor, allocation=allocation, status="INACTIVE", reason="x"
            )
