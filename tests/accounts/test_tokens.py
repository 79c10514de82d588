import datetime as dt
import hashlib

import pytest
from django.core.exceptions import PermissionDenied
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.authentication import ApiTokenAuthentication, ClusterImporter
from accounts.models import ApiToken
from accounts.tokens import api_token_check, api_token_issue, api_token_revoke
from allocations.models import Cluster
from tests.allocations.dbstate import unchanged
from tests.conftest import NOW, make_user

URL = "/api/v1/allocations/"


@pytest.fixture
def clock(monkeypatch):
    class Clock:
        now = NOW

    monkeypatch.setattr(timezone, "now", lambda: Clock.now)
    return Clock


@pytest.fixture
def issued(cluster, dana):
    return api_token_issue(actor=dana, cluster=cluster, name="  sacct importer ")


def bearer(value: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=value)
    return client


class TestApiTokenIssue:
    def test_a_cluster_admin_issues_a_token_shown_once_and_stored_hashed(
        self, cluster, dana, issued
    ):
        token = ApiToken.objects.get()

        assert issued.secret.startswith(f"sup_{token.prefix}_")
        assert len(issued.secret) > 40
        assert token.hashed == hashlib.sha256(issued.secret.encode()).hexdigest()
        assert issued.secret not in str(ApiToken.objects.values().get())
        assert (token.cluster, token.name, token.created_by) == (cluster, "sacct importer", dana)
        assert (token.last_used_at, token.revoked_at, token.is_active) == (None, None, True)

    def test_every_token_is_different(self, cluster, dana):
        secrets = {api_token_issue(actor=dana, cluster=cluster, name="x").secret for _ in range(5)}

        assert len(secrets) == 5

    def test_an_unnamed_token_is_called_importer(self, cluster, dana):
        assert api_token_issue(actor=dana, cluster=cluster, name=" ").token.name == "importer"

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
    def test_only_a_cluster_admin_may_issue(self, request, allocation, who):
        actor = request.getfixturevalue(who)

        with unchanged(), pytest.raises(PermissionDenied, match="Only admins of gpu1"):
            api_token_issue(actor=actor, cluster=allocation.cluster, name="mine")

    def test_an_admin_of_another_cluster_may_not_issue(self, cluster, org):
        erin = make_user("erin", org)
        Cluster.objects.create(name="cpu1").admins.add(erin)

        with unchanged(), pytest.raises(PermissionDenied):
            api_token_issue(actor=erin, cluster=cluster, name="mine")


class TestApiTokenCheck:
    def test_the_secret_finds_its_token(self, issued):
        assert api_token_check(issued.secret) == issued.token

    @pytest.mark.parametrize(
        "mangle",
        [
            pytest.param(lambda s: s[:-1] + ("A" if s[-1] != "A" else "B"), id="last-char"),
            pytest.param(lambda s: s + "x", id="longer"),
            pytest.param(lambda s: s[: len("sup_12345678_")], id="prefix-only"),
            pytest.param(lambda s: s.replace("sup_", "sk_", 1), id="other-marker"),
            pytest.param(lambda s: "sup_00000000_" + s.split("_", 2)[2], id="other-prefix"),
            pytest.param(lambda s: "", id="empty"),
            pytest.param(lambda s: "sup_", id="marker-only"),
        ],
    )
    def test_anything_but_the_exact_secret_finds_nothing(self, issued, mangle):
        with unchanged():
            assert api_token_check(mangle(issued.secret)) is None

    def test_a_revoked_token_finds_nothing(self, issued, dana):
        api_token_revoke(actor=dana, token=issued.token)

        assert api_token_check(issued.secret) is None

    def test_it_records_the_last_use_at_most_once_a_minute(
        self, clock, issued, django_assert_num_queries
    ):
        with django_assert_num_queries(2):  # the token, then its last use
            api_token_check(issued.secret)
        assert ApiToken.objects.get().last_used_at == NOW

        clock.now = NOW + dt.timedelta(seconds=60)
        with django_assert_num_queries(1):  # the token only
            api_token_check(issued.secret)
        assert ApiToken.objects.get().last_used_at == NOW

        clock.now = NOW + dt.timedelta(seconds=61)
        api_token_check(issued.secret)
        assert ApiToken.objects.get().last_used_at == NOW + dt.timedelta(seconds=61)


class TestApiTokenRevoke:
    def test_a_cluster_admin_revokes_a_token(self, clock, issued, dana):
        token = api_token_revoke(actor=dana, token=issued.token)

        assert (token.revoked_at, token.revoked_by, token.is_active) == (NOW, dana, False)

    def test_revoking_again_keeps_the_first_revocation(self, clock, issued, dana, staff):
        api_token_revoke(actor=dana, token=issued.token)
        clock.now = NOW + dt.timedelta(days=1)

        token = api_token_revoke(actor=staff, token=issued.token)

        assert (token.revoked_at, token.revoked_by) == (NOW, dana)

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
    def test_only_a_cluster_admin_may_revoke(self, request, allocation, issued, who):
        actor = request.getfixturevalue(who)

        with unchanged(), pytest.raises(PermissionDenied, match="Only admins of gpu1"):
            api_token_revoke(actor=actor, token=issued.token)

        assert api_token_check(issued.secret) == issued.token


class TestBearerAuthentication:
    def test_a_bearer_token_acts_for_its_cluster(self, clock, allocation, issued):
        response = bearer(f"Bearer {issued.secret}").get(URL)

        assert response.status_code == 200
        assert [a["name"] for a in response.json()["results"]] == ["folding-gpu"]
        assert ApiToken.objects.get().last_used_at == NOW

    def test_the_keyword_is_case_insensitive(self, allocation, issued):
        assert bearer(f"bearer {issued.secret}").get(URL).status_code == 200

    def test_the_request_is_from_the_cluster_not_a_person(self, rf, issued):
        request = rf.get(URL, HTTP_AUTHORIZATION=f"Bearer {issued.secret}")
        user, token = ApiTokenAuthentication().authenticate(request)

        assert isinstance(user, ClusterImporter)
        assert token == issued.token
        assert (user.is_authenticated, user.is_staff, user.pk) == (True, False, None)
        assert user.username == f"importer:gpu1:{issued.token.prefix}"

    @pytest.mark.parametrize(
        ("header", "detail"),
        [
            ("Bearer sup_00000000_nope", "Unknown or revoked token."),
            ("Bearer", "Give the token as 'Authorization: Bearer <token>'."),
            ("Bearer a b", "Give the token as 'Authorization: Bearer <token>'."),
        ],
    )
    def test_a_bad_bearer_header_is_401(self, allocation, issued, header, detail):
        response = bearer(header).get(URL)

        assert response.status_code == 401
        assert response.json()["detail"] == detail
        assert response.headers["WWW-Authenticate"] == "Bearer"

    def test_a_revoked_token_is_401(self, allocation, issued, dana):
        api_token_revoke(actor=dana, token=issued.token)

        response = bearer(f"Bearer {issued.secret}").get(URL)

        assert (response.status_code, response.json()["detail"]) == (
            401,
            "Unknown or revoked token.",
        )

    @pytest.mark.parametrize("header", ["Token {secret}", "Basic {secret}", "{secret}"])
    def test_another_scheme_is_not_a_token_and_leaves_the_request_anonymous(
        self, allocation, issued, header
    ):
        response = bearer(header.format(secret=issued.secret)).get(URL)

        assert response.status_code == 401
        assert response.json()["detail"] == "Authentication credentials were not provided."

    def test_a_token_in_the_url_is_ignored(self, allocation, issued):
        assert APIClient().get(URL, {"token": issued.secret}).status_code == 401

    def test_a_token_needs_no_csrf_token_but_a_session_does(self, clock, allocation, issued, dana):
        importer = APIClient(enforce_csrf_checks=True)
        importer.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.secret}")
        signed_in = APIClient(enforce_csrf_checks=True)
        signed_in.force_login(dana)
        body = {
            "cluster": "gpu1",
            "user": "bob",
            "allocation": "folding-gpu",
            "resource": "GPU H200",
            "estimate_su": "1",
        }

        assert importer.post("/api/v1/admission/", body, format="json").status_code == 200
        response = signed_in.post("/api/v1/admission/", body, format="json")
        assert response.status_code == 403
        assert "CSRF" in response.json()["detail"]
