"""The writes behind the review pages: approving several requests at once, and the
cluster's capacity with its append-only record."""

from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from allocations import services
from allocations.models import AllocationChange, ChangeRequest, ClusterCapacityChange
from tests.allocations.dbstate import unchanged
from tests.review.conftest import request_new_allocations


class TestApproveSeveral:
    def test_it_approves_each_request_as_asked(self, alice, project, cluster, gpu, dana):
        requests = request_new_allocations(
            alice=alice, project=project, cluster=cluster, gpu=gpu, n=3
        )

        changes = services.change_requests_approve_several(actor=dana, requests=requests)

        assert sorted(c.su_delta for c in changes) == [10, 11, 12]
        assert set(ChangeRequest.objects.values_list("state", flat=True)) == {"APPROVED"}

    def test_one_refusal_approves_nothing_and_names_the_request(
        self, alice, project, cluster, gpu, dana
    ):
        requests = request_new_allocations(
            alice=alice, project=project, cluster=cluster, gpu=gpu, n=3
        )
        services.change_request_cancel(actor=alice, request=requests[1])

        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.change_requests_approve_several(actor=dana, requests=requests)

        message = excinfo.value.messages[0]
        assert message.startswith("Nothing was approved: the request for extra-1 on gpu1")
        assert "already cancelled" in message
        assert not AllocationChange.objects.filter(kind="REQUEST").exists()

    def test_an_admin_of_another_cluster_approves_nothing(
        self, alice, project, cluster, gpu, eve, other_cluster
    ):
        requests = request_new_allocations(
            alice=alice, project=project, cluster=cluster, gpu=gpu, n=2
        )

        with unchanged(), pytest.raises(ValidationError, match="Only admins of gpu1"):
            services.change_requests_approve_several(actor=eve, requests=requests)

    def test_an_empty_choice_is_refused(self, dana):
        with pytest.raises(ValidationError) as excinfo:
            services.change_requests_approve_several(actor=dana, requests=[])

        assert excinfo.value.message_dict == {"requests": ["Choose at least one request."]}


class TestClusterSetCapacity:
    def test_it_records_who_changed_it_from_what_and_why(self, cluster, dana):
        change = services.cluster_set_capacity(
            actor=dana, cluster=cluster, su_capacity_per_month="250000", reason="New racks"
        )

        cluster.refresh_from_db()
        assert cluster.su_capacity_per_month == Decimal("250000")
        assert (
            change.old_su_capacity_per_month,
            change.new_su_capacity_per_month,
            change.actor,
            change.reason,
        ) == (Decimal("100000"), Decimal("250000"), dana, "New racks")

    def test_an_empty_value_clears_it(self, cluster, dana):
        services.cluster_set_capacity(
            actor=dana, cluster=cluster, su_capacity_per_month="", reason="Unknown for now"
        )

        cluster.refresh_from_db()
        assert cluster.su_capacity_per_month is None
        assert ClusterCapacityChange.objects.get().new_su_capacity_per_month is None

    @pytest.mark.parametrize(
        "value, reason, field",
        [
            ("0", "why", "su_capacity_per_month"),
            ("-5", "why", "su_capacity_per_month"),
            ("1.00001", "why", "su_capacity_per_month"),
            ("100000", "why", "su_capacity_per_month"),  # unchanged
            ("5000", "  ", "reason"),
        ],
    )
    def test_bad_input_is_refused_beside_its_field(self, cluster, dana, value, reason, field):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.cluster_set_capacity(
                actor=dana, cluster=cluster, su_capacity_per_month=value, reason=reason
            )

        assert list(excinfo.value.message_dict) == [field]

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie", "eve"])
    def test_only_the_clusters_admins_may_change_it(self, cluster, people, who):
        with unchanged(), pytest.raises(PermissionDenied):
            services.cluster_set_capacity(
                actor=people[who], cluster=cluster, su_capacity_per_month="1", reason="x"
            )

    def test_a_superuser_may_change_it(self, cluster, staff):
        services.cluster_set_capacity(
            actor=staff, cluster=cluster, su_capacity_per_month="1", reason="x"
        )

        cluster.refresh_from_db()
        assert cluster.su_capacity_per_month == 1
