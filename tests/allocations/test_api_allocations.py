import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.tokens import api_token_issue
from allocations import services
from allocations.admission import hold_create
from allocations.models import Allocation, Cluster, Resource
from tests.conftest import END, NOW, START, client_for, make_user, usage

URL = "/api/v1/allocations/"


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    monkeypatch.setattr(timezone, "now", lambda: NOW)


def names(response) -> list[str]:
    assert response.status_code == 200
    return [a["name"] for a in response.json()["results"]]


@pytest.fixture
def erin(org):
    """PI of another project on gpu1, and admin of the CPU cluster cpu1."""
    return make_user("erin", org)


@pytest.fixture
def landscape(allocation, alice, dana, erin, cluster, gpu, project):
    """Besides alice's folding-gpu: erin's climate-gpu on gpu1, and alice's folding-cpu on
    cpu1, which erin administers."""
    climate = services.project_create(actor=erin, title="Climate", pi=erin)
    request = services.allocation_request_create(
        actor=erin,
        project=climate,
        cluster=cluster,
        name="climate-gpu",
        resources=[gpu],
        su_amount="500",
        start=START,
        end=END,
        justification="Ensembles",
    )
    services.change_request_approve(actor=dana, request=request)
    cpu1 = Cluster.objects.create(name="cpu1")
    cpu1.admins.add(erin)
    cores = Resource.objects.create(cluster=cpu1, name="CPU", kind="CPU", unit="core")
    services.rate_add(actor=None, resource=cores, su_per_unit_hour="1", start=NOW)
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
    return {a.name: a for a in Allocation.objects.all()}


@pytest.fixture
def charged(allocation, alice, bob, gpu):
    """bob used 20 SUs; alice holds 50 for a running job."""
    services.usage_record_batch(
        cluster=allocation.cluster, records=[usage(allocation, bob, gpu, "1", 10)]
    )
    hold_create(
        cluster=allocation.cluster,
        actor=None,
        username="alice",
        account=allocation.name,
        resource="GPU H200",
        job_id="2",
        estimate_su="50",
    )
    return allocation


class TestAllocationList:
    @pytest.mark.parametrize(
        ("who", "expected"),
        [
            ("alice", ["folding-cpu", "folding-gpu"]),  # the PI: her allocations everywhere
            ("bob", ["folding-gpu"]),  # a member: only where he is one
            ("charlie", []),  # an outsider: nothing
            ("dana", ["climate-gpu", "folding-gpu"]),  # gpu1's admin: everything on gpu1
            ("erin", ["folding-cpu", "climate-gpu"]),  # cpu1 (hers to run), then her own
        ],
    )
    def test_each_person_sees_exactly_what_they_may(self, request, landscape, who, expected):
        assert names(client_for(request.getfixturevalue(who)).get(URL)) == expected

    def test_an_importer_token_sees_its_clusters_allocations(self, landscape, dana, cluster):
        secret = api_token_issue(actor=dana, cluster=cluster, name="slurm").secret

        assert names(client_for(secret=secret).get(URL)) == ["climate-gpu", "folding-gpu"]

    def test_no_credentials_is_401(self, landscape):
        assert APIClient().get(URL).status_code == 401

    def test_the_list_costs_the_same_queries_for_few_or_many_allocations(
        self, landscape, alice, project, cluster, gpu
    ):
        client = client_for(alice)
        with CaptureQueriesContext(connection) as few:
            assert len(names(client.get(URL))) == 2
        for i in range(5):
            services.allocation_request_create(
                actor=alice,
                project=project,
                cluster=cluster,
                name=f"extra-{i}",
                resources=[gpu],
                su_amount="10",
                start=START,
                end=END,
                justification="More",
            )

        with CaptureQueriesContext(connection) as many:
            assert len(names(client.get(URL))) == 7

        # session, user, the count, the page (project, PI and cluster joined)
        assert len(few) == len(many) == 4, [q["sql"] for q in many]


class TestAllocationRetrieve:
    def test_the_pi_reads_an_allocation_by_code(self, charged, alice):
        response = client_for(alice).get(f"{URL}{charged.code}/")

        assert response.status_code == 200
        assert response.json() == {
            "code": str(charged.code),
            "name": "folding-gpu",
            "cluster": "gpu1",
            "project": "Protein folding",
            "project_code": str(charged.project.code),
            "project_status": "ACTIVE",
            "status": "ACTIVE",
            "start": "2026-01-01",
            "end": "2026-12-31",
            "balance": {
                "budget": "1000.0000",
                "used": "20.0000",
                "held": "50.0000",
                "remaining": "930.0000",
                "overdrawn": False,
            },
        }

    @pytest.mark.parametrize(
        ("who", "name"),
        [("charlie", "folding-gpu"), ("bob", "folding-cpu"), ("dana", "folding-cpu")],
    )
    def test_an_allocation_the_caller_may_not_see_is_404(self, request, landscape, who, name):
        client = client_for(request.getfixturevalue(who))

        assert client.get(f"{URL}{landscape[name].code}/").status_code == 404
        assert client.get(f"{URL}{landscape[name].code}/balance/").status_code == 404


class TestAllocationBalance:
    def url(self, allocation, **params):
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"{URL}{allocation.code}/balance/" + (f"?{query}" if query else "")

    def test_a_member_reads_the_balance_and_their_own(self, charged, bob):
        response = client_for(bob).get(self.url(charged))

        assert response.status_code == 200
        assert response.json() == {
            "budget": "1000.0000",
            "used": "20.0000",
            "held": "50.0000",
            "remaining": "930.0000",
            "overdrawn": False,
            "member": {
                "user": "bob",
                "status": "ACTIVE",
                "cap": "300.0000",
                "used": "20.0000",
                "held": "0.0000",
                "remaining": "280.0000",
            },
        }

    def test_the_pi_with_no_cap_may_use_the_pool(self, charged, alice):
        member = client_for(alice).get(self.url(charged)).json()["member"]

        assert member == {
            "user": "alice",
            "status": "ACTIVE",
            "cap": None,
            "used": "0.0000",
            "held": "50.0000",
            "remaining": "930.0000",
        }

    def test_the_pi_reads_a_members_balance(self, charged, alice):
        response = client_for(alice).get(self.url(charged, user="bob"))

        assert (response.status_code, response.json()["member"]["user"]) == (200, "bob")

    def test_the_cluster_admin_reads_a_members_balance_but_has_none_of_their_own(
        self, charged, dana
    ):
        client = client_for(dana)

        assert "member" not in client.get(self.url(charged)).json()
        assert client.get(self.url(charged, user="bob")).json()["member"]["used"] == "20.0000"

    def test_a_member_may_not_read_another_members_balance(self, charged, bob):
        client = client_for(bob)

        assert client.get(self.url(charged, user="alice")).status_code == 403
        assert client.get(self.url(charged, user="bob")).status_code == 200

    def test_an_unknown_member_is_404(self, charged, alice):
        response = client_for(alice).get(self.url(charged, user="charlie"))

        assert response.status_code == 404

    def test_an_overdrawn_allocation_says_so(self, allocation, alice, gpu):
        services.usage_record_batch(
            cluster=allocation.cluster, records=[usage(allocation, alice, gpu, "1", 600)]
        )

        data = client_for(alice).get(self.url(allocation)).json()

        assert (data["remaining"], data["overdrawn"]) == ("-200.0000", True)
        assert data["member"]["remaining"] == "-200.0000"

    @pytest.mark.parametrize("params", [{}, {"user": "bob"}])
    def test_a_balance_costs_the_same_queries_with_2_or_200_usage_records(
        self, allocation, alice, bob, gpu, params
    ):
        client = client_for(alice)

        def queries_for_balance(jobs: range) -> list[str]:
            services.usage_record_batch(
                cluster=allocation.cluster,
                records=[usage(allocation, bob, gpu, str(i), "0.01") for i in jobs],
            )
            with CaptureQueriesContext(connection) as captured:
                response = client.get(self.url(allocation, **params))
            assert response.status_code == 200
            return [q["sql"] for q in captured]

        few = queries_for_balance(range(2))
        many = queries_for_balance(range(2, 200))

        assert len(few) == len(many), many
        # session, user, the allocation; for ?user= whether alice manages the project
        # (she is its PI: no query) and the member; otherwise alice's own membership.
        assert len(few) == 4, few
        assert client.get(self.url(allocation, **params)).json()["used"] == "4.0000"
