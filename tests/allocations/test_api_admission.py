import json

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.tokens import api_token_issue, api_token_revoke
from allocations import services
from allocations.models import Cluster, Resource, Status
from tests.allocations.dbstate import unchanged
from tests.conftest import NOW, make_user, usage

URL = "/api/v1/admission/"


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    monkeypatch.setattr(timezone, "now", lambda: NOW)


@pytest.fixture
def issued(cluster, dana):
    return api_token_issue(actor=dana, cluster=cluster, name="slurm")


@pytest.fixture
def importer(issued):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.secret}")
    return client


def body(**changes):
    data = {
        "cluster": "gpu1",
        "user": "bob",
        "allocation": "folding-gpu",
        "resource": "GPU H200",
        "estimate_su": "10",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


def ask(client, **changes):
    return client.post(URL, body(**changes), format="json")


class TestAdmissionApi:
    def test_an_importer_token_gets_an_admission_with_the_remaining_balances(
        self, allocation, importer, bob, gpu
    ):
        services.usage_record_batch(
            cluster=allocation.cluster, records=[usage(allocation, bob, gpu, "1", 10)]
        )

        response = ask(importer)

        assert response.status_code == 200
        assert response.json() == {
            "allowed": True,
            "reason": None,
            "detail": "Admitted.",
            "estimate_su": "10.0000",
            "allocation_remaining": "980.0000",
            "member_remaining": "280.0000",
        }

    def test_an_estimate_as_count_and_wall_time_is_converted_at_the_rate(
        self, allocation, importer
    ):
        response = ask(importer, estimate_su=..., count="4", wall_seconds=5400)

        assert response.status_code == 200
        assert response.json()["estimate_su"] == "12.0000"  # 6 GPU-hours at 2 SU

    def test_a_whole_number_may_be_sent_as_a_json_integer(self, allocation, importer):
        response = ask(importer, estimate_su=10)

        assert (response.status_code, response.json()["estimate_su"]) == (200, "10.0000")

    def test_it_writes_nothing_but_the_tokens_use(self, allocation, importer):
        ask(importer)  # records the token's last use, which is then good for a minute

        with unchanged():
            assert ask(importer).status_code == 200

    @pytest.mark.parametrize(
        ("changes", "reason"),
        [
            ({"estimate_su": "300.0001"}, "member_cap_exhausted"),
            ({"user": "alice", "estimate_su": "1000.0001"}, "allocation_exhausted"),
            ({"user": "charlie"}, "not_a_member"),
            ({"resource": "TPU"}, "resource_not_in_allocation"),
        ],
    )
    def test_a_refusal_is_409_with_its_reason(
        self, allocation, importer, charlie, cluster, changes, reason
    ):
        tpu = Resource.objects.create(cluster=cluster, name="TPU", kind="OTHER", unit="chip")
        services.rate_add(actor=None, resource=tpu, su_per_unit_hour="1", start=NOW)

        response = ask(importer, **changes)

        assert response.status_code == 409
        assert response.json()["allowed"] is False
        assert response.json()["reason"] == reason
        assert response.json()["detail"]

    @pytest.mark.parametrize(
        ("level", "reason"),
        [
            ("project", "project_inactive"),
            ("allocation", "allocation_inactive"),
            ("membership", "membership_inactive"),
        ],
    )
    def test_an_inactive_level_is_409_with_its_reason(
        self, allocation, importer, dana, alice, bob, level, reason
    ):
        if level == "project":
            services.project_set_status(
                actor=dana, project=allocation.project, status=Status.INACTIVE, reason="Audit"
            )
        elif level == "allocation":
            services.allocation_set_status(
                actor=dana, allocation=allocation, status=Status.INACTIVE, reason="Audit"
            )
        else:
            services.membership_set_status(
                actor=alice, membership=allocation.memberships.get(user=bob), status="INACTIVE"
            )

        response = ask(importer)

        assert (response.status_code, response.json()["reason"]) == (409, reason)

    @pytest.mark.parametrize(
        ("changes", "reason"),
        [
            ({"user": "nobody"}, "unknown_user"),
            ({"allocation": "nope"}, "unknown_allocation"),
            ({"resource": "Quantum"}, "unknown_resource"),
        ],
    )
    def test_a_name_that_does_not_resolve_is_404_with_its_reason(
        self, allocation, importer, changes, reason
    ):
        response = ask(importer, **changes)

        assert response.status_code == 404
        assert (response.json()["allowed"], response.json()["reason"]) == (False, reason)

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            pytest.param({"estimate_su": "-5"}, "estimate_su", id="negative"),
            pytest.param({"estimate_su": -5}, "estimate_su", id="negative-int"),
            pytest.param({"estimate_su": "abc"}, "estimate_su", id="non-numeric"),
            pytest.param({"estimate_su": "NaN"}, "estimate_su", id="NaN"),
            pytest.param({"estimate_su": "Infinity"}, "estimate_su", id="Infinity"),
            pytest.param({"estimate_su": 1.5}, "estimate_su", id="json-float"),
            pytest.param({"estimate_su": 10.0}, "estimate_su", id="json-float-whole"),
            pytest.param({"estimate_su": True}, "estimate_su", id="json-bool"),
            pytest.param({"estimate_su": "1.00001"}, "estimate_su", id="too-many-places"),
            pytest.param({"estimate_su": ""}, "estimate_su", id="blank"),
            pytest.param({"estimate_su": "1e16"}, "estimate_su", id="too-large"),
            pytest.param({"user": ...}, "user", id="missing-user"),
            pytest.param({"cluster": ...}, "cluster", id="missing-cluster"),
            pytest.param({"allocation": ...}, "allocation", id="missing-allocation"),
            pytest.param({"resource": ...}, "resource", id="missing-resource"),
            pytest.param({"estimate_su": ..., "count": "4"}, "non_field_errors", id="no-wall"),
            pytest.param({"estimate_su": ...}, "non_field_errors", id="no-estimate"),
            pytest.param({"estimate_su": None}, "non_field_errors", id="null-estimate"),
            pytest.param({"count": "4", "wall_seconds": 60}, "non_field_errors", id="both"),
            pytest.param({"estimate_su": ..., "count": "NaN", "wall_seconds": 60}, "count"),
            pytest.param({"estimate_su": ..., "count": 2.5, "wall_seconds": 60}, "count"),
            pytest.param({"estimate_su": ..., "count": "4", "wall_seconds": 0}, "wall_seconds"),
            pytest.param({"estimate_su": ..., "count": "4", "wall_seconds": "1.5"}, "wall_seconds"),
            pytest.param(
                {"estimate_su": ..., "count": "4", "wall_seconds": "Infinity"}, "wall_seconds"
            ),
            pytest.param(
                {"estimate_su": ..., "count": "999999999", "wall_seconds": 999999999999},
                "wall_seconds",
                id="wall-too-long",
            ),
        ],
    )
    def test_bad_input_is_400_with_field_errors(self, allocation, importer, changes, field):
        response = ask(importer, **changes)

        assert response.status_code == 400
        assert list(response.json()["errors"]) == [field]
        assert response.json()["detail"]

    def test_an_estimate_too_large_to_show_is_400_not_a_crash(self, allocation, importer, dana):
        gpu = allocation.resources.get(kind="GPU")
        services.rate_close(actor=dana, rate=gpu.rates.get(), end=NOW)
        services.rate_add(actor=dana, resource=gpu, su_per_unit_hour="1000000", start=NOW)

        response = ask(importer, estimate_su=..., count="999999999", wall_seconds=9999999999)

        assert response.status_code == 400
        assert list(response.json()["errors"]) == ["count"]

    @pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
    def test_json_constants_that_are_not_numbers_are_refused_by_the_parser(
        self, allocation, importer, constant
    ):
        raw = json.dumps(body()).replace('"10"', constant)

        response = importer.post(URL, raw, content_type="application/json")

        assert response.status_code == 400
        assert "JSON parse error" in response.json()["detail"]

    def test_unknown_fields_are_refused_by_name(self, allocation, importer):
        # A misspelt optional field (estimate_sus) must not pass as "no estimate".
        response = ask(importer, partition="gpu", qos="high")

        assert response.status_code == 400
        assert response.json()["errors"] == {
            "partition": ["Unknown field."],
            "qos": ["Unknown field."],
        }

    def test_a_token_of_another_cluster_is_403(self, allocation, org):
        erin = make_user("erin", org)
        other = Cluster.objects.create(name="cpu1")
        other.admins.add(erin)
        issued = api_token_issue(actor=erin, cluster=other, name="cpu importer")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.secret}")

        response = ask(client)

        assert response.status_code == 403
        assert response.json()["detail"] == "This token belongs to another cluster."

    def test_a_revoked_token_is_401(self, allocation, importer, issued, dana):
        api_token_revoke(actor=dana, token=issued.token)

        response = ask(importer)

        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"

    def test_no_credentials_is_401(self, allocation):
        response = ask(APIClient())

        assert response.status_code == 401

    def test_a_cluster_admin_may_ask_with_a_session(self, allocation, dana):
        client = APIClient()
        client.force_login(dana)

        assert ask(client).status_code == 200

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
    def test_anyone_else_with_a_session_is_403(self, request, allocation, who):
        client = APIClient()
        client.force_login(request.getfixturevalue(who))

        response = ask(client)

        assert response.status_code == 403
        assert "allowed" not in response.json()

    def test_an_unknown_cluster_is_404_for_a_session_and_403_for_a_token(
        self, allocation, dana, importer
    ):
        client = APIClient()
        client.force_login(dana)

        response = ask(client, cluster="nowhere")

        assert response.status_code == 404
        assert response.json()["reason"] == "unknown_cluster"
        assert ask(importer, cluster="nowhere").status_code == 403
