import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts.tokens import api_token_issue
from allocations import services
from allocations.ledger import ledger_drift
from allocations.models import Allocation, Usage, UsageAdjustment
from tests.allocations.dbstate import unchanged
from tests.conftest import client_for, usage

URL = "/api/v1/refunds/"


@pytest.fixture
def charged(allocation, alice, bob, gpu, cpu):
    """bob's job 1 (20 SU); alice's job 2 on both resources (3 + 1 SU)."""
    services.usage_record_batch(
        cluster=allocation.cluster,
        records=[
            usage(allocation, bob, gpu, "1", 10),
            usage(allocation, alice, gpu, "2", "1.5"),
            usage(allocation, alice, cpu, "2", 100),
        ],
    )
    return allocation


@pytest.fixture
def admin(dana):
    return client_for(dana)


def refund(client, **changes):
    data = {"cluster": "gpu1", "job_id": "1", "reason": "Node failure"}
    data.update(changes)
    return client.post(URL, {k: v for k, v in data.items() if v is not ...}, format="json")


class TestRefundsApi:
    def test_a_cluster_admin_refunds_a_job(self, charged, admin, dana):
        rows = list(Usage.objects.order_by("pk").values())

        response = refund(admin)

        assert response.status_code == 201
        assert response.json() == [
            {
                "job_id": "1",
                "resource": "GPU H200",
                "user": "bob",
                "kind": "REFUND",
                "su_delta": "-20.0000",
                "reason": "Node failure",
            }
        ]
        assert UsageAdjustment.objects.get().actor == dana
        assert list(Usage.objects.order_by("pk").values()) == rows
        assert Allocation.objects.get(pk=charged.pk).su_used == 4
        assert ledger_drift() == []

    def test_it_refunds_every_resource_of_a_job_in_a_constant_number_of_queries(
        self, charged, admin
    ):
        with CaptureQueriesContext(connection) as one_row:
            assert refund(admin, job_id="1").status_code == 201
        with CaptureQueriesContext(connection) as two_rows:
            response = refund(admin, job_id="2")

        assert sorted((a["resource"], a["su_delta"]) for a in response.json()) == [
            ("CPU", "-1.0000"),
            ("GPU H200", "-3.0000"),
        ]
        assert len(one_row) == len(two_rows), [q["sql"] for q in two_rows]
        assert ledger_drift() == []

    def test_it_refunds_one_users_share(self, allocation, admin, alice, bob, gpu):
        services.usage_record_batch(
            cluster=allocation.cluster,
            records=[usage(allocation, alice, gpu, "7", 1), usage(allocation, bob, gpu, "7", 2)],
        )

        response = refund(admin, job_id="7", user="bob")

        assert [(a["user"], a["su_delta"]) for a in response.json()] == [("bob", "-4.0000")]

    def test_a_second_refund_is_400_with_a_clear_message(self, charged, admin):
        refund(admin)

        with unchanged():
            response = refund(admin, reason="Again")

        assert response.status_code == 400
        assert response.json()["errors"] == {"job_id": ["Job 1 has already been refunded."]}
        assert response.json()["detail"] == "Job 1 has already been refunded."

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"reason": ...}, "reason"),
            ({"reason": "   "}, "reason"),
            ({"job_id": ...}, "job_id"),
            ({"job_id": "404"}, "job_id"),
            ({"cluster": ...}, "cluster"),
        ],
    )
    def test_bad_input_is_400(self, charged, admin, changes, field):
        with unchanged():
            response = refund(admin, **changes)

        assert response.status_code == 400
        assert list(response.json()["errors"]) == [field]

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
    def test_only_a_cluster_admin_may_refund(self, request, charged, who):
        client = client_for(request.getfixturevalue(who))

        with unchanged():
            response = refund(client)

        assert response.status_code == 403

    @pytest.mark.parametrize(
        "changes", [{}, {"reason": ...}], ids=["valid-request", "invalid-request"]
    )
    def test_an_importer_token_may_not_refund(self, charged, cluster, dana, changes):
        importer = client_for(secret=api_token_issue(actor=dana, cluster=cluster, name="x").secret)
        importer.get("/api/v1/allocations/")  # records the token's last use

        with unchanged():
            response = refund(importer, **changes)

        assert response.status_code == 403
        assert "cluster admin" in response.json()["detail"]

    def test_no_credentials_is_401(self, charged):
        with unchanged():
            assert refund(APIClient()).status_code == 401
