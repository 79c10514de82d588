import datetime as dt

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.tokens import api_token_issue
from allocations import services
from allocations.admission import hold_create
from allocations.ledger import ledger_drift
from allocations.models import Allocation, Cluster, Hold, Membership, Resource
from tests.allocations.dbstate import unchanged
from tests.conftest import END, NOW, START, client_for, make_user

URL = "/api/v1/holds/"


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    monkeypatch.setattr(timezone, "now", lambda: NOW)


@pytest.fixture
def importer(cluster, dana):
    client = client_for(secret=api_token_issue(actor=dana, cluster=cluster, name="slurm").secret)
    # The first use records the token's last use; later ones, within the minute, write nothing.
    client.get(URL)
    return client


@pytest.fixture
def erin(org):
    """Admin of the CPU cluster cpu1."""
    return make_user("erin", org)


@pytest.fixture
def other_hold(alice, erin, project):
    """An open hold of alice's on her allocation on another cluster."""
    cpu1 = Cluster.objects.create(name="cpu1")
    cpu1.admins.add(erin)
    cores = Resource.objects.create(cluster=cpu1, name="CPU", kind="CPU", unit="core")
    services.rate_add(
        actor=None, resource=cores, su_per_unit_hour="1", start=NOW - dt.timedelta(days=1)
    )
    request = services.allocation_request_create(
        actor=alice,
        project=project,
        cluster=cpu1,
        name="folding-cpu",
        resources=[cores],
        su_amount="100",
        start=START,
        end=END,
        justification="Preprocessing",
    )
    services.change_request_approve(actor=erin, request=request)
    hold, _ = hold_create(
        cluster=cpu1,
        actor=None,
        username="alice",
        account="folding-cpu",
        resource="CPU",
        job_id="900",
        estimate_su="5",
    )
    return hold


def body(**changes):
    data = {
        "cluster": "gpu1",
        "user": "bob",
        "allocation": "folding-gpu",
        "resource": "GPU H200",
        "job_id": "101",
        "estimate_su": "50",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


def post(client, **changes):
    return client.post(URL, body(**changes), format="json")


class TestHoldsApi:
    def test_a_hold_is_201_and_reserves_the_sus(self, allocation, importer, bob):
        response = post(importer)

        assert response.status_code == 201
        data = response.json()
        hold = Hold.objects.get()
        assert data["code"] == str(hold.code)
        assert {k: data[k] for k in ("cluster", "allocation", "user", "resource", "job_id")} == {
            "cluster": "gpu1",
            "allocation": "folding-gpu",
            "user": "bob",
            "resource": "GPU H200",
            "job_id": "101",
        }
        assert (data["su_amount"], data["state"], data["closed_at"]) == ("50.0000", "OPEN", None)
        assert hold.actor is None  # a token acts for a cluster, not a person
        assert Allocation.objects.get(pk=allocation.pk).su_held == 50
        assert Membership.objects.get(allocation=allocation, user=bob).su_held == 50
        assert ledger_drift() == []

    def test_a_hold_by_a_cluster_admin_records_who_made_it(self, allocation, dana):
        response = post(client_for(dana), estimate_su=..., count="2", wall_seconds=3600)

        assert response.status_code == 201
        assert response.json()["su_amount"] == "4.0000"
        assert Hold.objects.get().actor == dana

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
    def test_anyone_else_with_a_session_may_not_hold(self, request, allocation, who):
        client = client_for(request.getfixturevalue(who))

        with unchanged():
            response = post(client)

        assert response.status_code == 403

    def test_a_second_hold_for_the_same_job_is_409_hold_exists(self, allocation, importer):
        post(importer)

        with unchanged():
            response = post(importer, user="alice", estimate_su="1")

        assert response.status_code == 409
        assert response.json()["reason"] == "hold_exists"
        assert response.json()["detail"] == "This job already has an open hold."

    def test_a_hold_beyond_the_cap_is_409_and_an_unknown_name_404(self, allocation, importer):
        with unchanged():
            capped = post(importer, estimate_su="300.0001")
            unknown = post(importer, user="nobody")

        assert (capped.status_code, capped.json()["reason"]) == (409, "member_cap_exhausted")
        assert (unknown.status_code, unknown.json()["reason"]) == (404, "unknown_user")

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"job_id": ...}, "job_id"),
            ({"job_id": "   "}, "job_id"),
            ({"job_id": "9" * 65}, "job_id"),
            ({"estimate_su": "0"}, "estimate_su"),
            ({"estimate_su": "-1"}, "estimate_su"),
            ({"estimate_su": 2.5}, "estimate_su"),
        ],
    )
    def test_bad_input_is_400(self, allocation, importer, changes, field):
        with unchanged():
            response = post(importer, **changes)

        assert response.status_code == 400
        assert list(response.json()["errors"]) == [field]

    def test_the_list_shows_only_the_callers_clusters_holds(
        self, allocation, importer, dana, erin, other_hold
    ):
        post(importer)
        cpu_importer = client_for(
            secret=api_token_issue(actor=erin, cluster=other_hold.cluster, name="x").secret
        )

        def jobs(client):
            response = client.get(URL)
            assert response.status_code == 200
            return [(h["cluster"], h["job_id"]) for h in response.json()["results"]]

        assert jobs(importer) == [("gpu1", "101")]
        assert jobs(client_for(dana)) == [("gpu1", "101")]
        assert jobs(cpu_importer) == [("cpu1", "900")]
        assert jobs(client_for(erin)) == [("cpu1", "900")]

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
    def test_people_who_administer_no_cluster_see_no_holds(
        self, request, allocation, importer, other_hold, who
    ):
        post(importer)

        response = client_for(request.getfixturevalue(who)).get(URL)

        assert (response.status_code, response.json()["results"]) == (200, [])

    def test_no_credentials_is_401(self, allocation):
        assert APIClient().get(URL).status_code == 401

    def test_delete_releases_the_hold(self, allocation, importer, bob):
        code = post(importer).json()["code"]

        response = importer.delete(f"{URL}{code}/")

        assert response.status_code == 200
        assert (response.json()["state"], response.json()["closed_at"]) == (
            "RELEASED",
            "2026-06-15T12:00:00Z",
        )
        assert Allocation.objects.get(pk=allocation.pk).su_held == 0
        assert Membership.objects.get(allocation=allocation, user=bob).su_held == 0
        assert ledger_drift() == []

    def test_delete_twice_is_400_with_a_clear_message(self, allocation, importer):
        code = post(importer).json()["code"]
        importer.delete(f"{URL}{code}/")

        with unchanged():
            response = importer.delete(f"{URL}{code}/")

        assert response.status_code == 400
        assert response.json()["detail"] == "This hold is already released."
        assert response.json()["code"] == "hold_not_open"

    def test_a_hold_of_another_cluster_cannot_be_seen_or_released(
        self, allocation, importer, dana, other_hold
    ):
        admin = client_for(dana)

        with unchanged():
            assert importer.get(f"{URL}{other_hold.code}/").status_code == 404
            assert importer.delete(f"{URL}{other_hold.code}/").status_code == 404
            assert admin.delete(f"{URL}{other_hold.code}/").status_code == 404

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
    def test_people_who_administer_no_cluster_cannot_release_a_hold(
        self, request, allocation, importer, who
    ):
        code = post(importer).json()["code"]
        client = client_for(request.getfixturevalue(who))

        with unchanged():
            response = client.delete(f"{URL}{code}/")

        assert response.status_code == 404
