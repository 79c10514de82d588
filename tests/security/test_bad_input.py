"""Hostile and malformed input on the API: every case is a 4xx with a message a caller
can act on, never a 500, and nothing is stored."""

import json

import pytest
from django.urls import reverse

from accounts.tokens import api_token_issue
from allocations import services
from allocations.models import Project
from tests.allocations.dbstate import unchanged
from tests.conftest import client_for

ESTIMATE = {
    "cluster": "gpu1",
    "user": "bob",
    "allocation": "folding-gpu",
    "resource": "GPU H200",
    "estimate_su": "1",
}
RECORD = {
    "job_id": "1",
    "user": "bob",
    "allocation": "folding-gpu",
    "resource": "GPU H200",
    "raw_unit_seconds": "3600",
    "charged_at": "2026-03-01T12:00:00Z",
}
HOSTILE_NAMES = [
    "b\u00f6b\U0001f600",  # unicode and an emoji
    "' OR 1=1 --",
    "bob'; DROP TABLE allocations_usage; --",
    "<script>alert(1)</script>",
    "\u202egnp.exe",  # right-to-left override
    "x" * 5000,
]


@pytest.fixture
def importer(allocation, dana, gpu, cpu):
    client = client_for(
        secret=api_token_issue(actor=dana, cluster=allocation.cluster, name="i").secret
    )
    # The first use records last_used_at; later "nothing changed" checks see no write.
    assert client.get("/api/v1/allocations/").status_code == 200
    return client


def refused(response) -> str:
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
    body = response.json()
    assert body["detail"]
    return json.dumps(body)


class TestBadInput:
    @pytest.mark.parametrize("field", ["user", "allocation", "resource", "cluster"])
    @pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
    def test_hostile_names_are_refused_as_unknown(self, importer, field, name):
        with unchanged():
            admission = importer.post(
                "/api/v1/admission/", {**ESTIMATE, field: name}, format="json"
            )
            hold = importer.post(
                "/api/v1/holds/", {**ESTIMATE, field: name, "job_id": "7"}, format="json"
            )
            usage = importer.post(
                "/api/v1/usage/",
                {"cluster": "gpu1", "records": [{**RECORD, field: name}]}
                if field != "cluster"
                else {"cluster": name, "records": [RECORD]},
                format="json",
            )
        for response in (admission, hold, usage):
            refused(response)

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("NaN", "finite"),
            ("Infinity", "finite"),
            ("-Infinity", "finite"),
            ("-1", "negative"),
            ("1e999999", ""),
            (1.5, "decimal number as a string"),
            ("1.00001", "decimal places"),
            ("twelve", ""),
            (True, "decimal number as a string"),
            ([], "decimal number as a string"),
        ],
    )
    def test_bad_amounts_are_refused(self, importer, value, message):
        with unchanged():
            estimate = importer.post(
                "/api/v1/admission/", {**ESTIMATE, "estimate_su": value}, format="json"
            )
            charge = importer.post(
                "/api/v1/usage/",
                {"cluster": "gpu1", "records": [{**RECORD, "raw_unit_seconds": value}]},
                format="json",
            )
        assert message in refused(estimate)
        refused(charge)

    @pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
    def test_bare_json_nan_is_a_parse_error(self, importer, token):
        body = f'{{"cluster": "gpu1", "records": [{{"raw_unit_seconds": {token}}}]}}'
        with unchanged():
            response = importer.post("/api/v1/usage/", body, content_type="application/json")
        assert response.status_code == 400
        assert "JSON parse error" in response.json()["detail"]

    @pytest.mark.parametrize(
        "when",
        ["99999-03-01T12:00:00Z", "0001-01-01T00:00:00Z", "2026-13-45T25:61:00Z", "yesterday", ""],
    )
    def test_dates_out_of_range_are_refused(self, importer, when):
        with unchanged():
            response = importer.post(
                "/api/v1/usage/",
                {"cluster": "gpu1", "records": [{**RECORD, "charged_at": when}]},
                format="json",
            )
        assert "charged_at" in refused(response)

    @pytest.mark.parametrize(
        ("url", "body"),
        [
            ("/api/v1/admission/", {**ESTIMATE, "estimate_sus": "5"}),
            ("/api/v1/holds/", {**ESTIMATE, "job_id": "7", "owner": "alice"}),
            ("/api/v1/usage/", {"cluster": "gpu1", "records": [RECORD], "dry_run": True}),
            ("/api/v1/usage/", {"cluster": "gpu1", "records": [{**RECORD, "su_amount": "0"}]}),
        ],
    )
    def test_unknown_fields_are_refused_by_name(self, importer, url, body):
        with unchanged():
            response = importer.post(url, body, format="json")
        text = refused(response)
        assert any(name in text for name in ("estimate_sus", "owner", "dry_run", "su_amount"))

    def test_unknown_refund_fields_are_refused(self, client, allocation, dana):
        session = client_for(dana)
        with unchanged():
            response = session.post(
                "/api/v1/refunds/",
                {"cluster": "gpu1", "job_id": "1", "reason": "x", "amount": "5"},
                format="json",
            )
        assert "amount" in refused(response)

    def test_an_oversized_body_is_413_with_a_message(self, importer, settings):
        settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
        body = {"cluster": "gpu1", "records": [{**RECORD, "job_id": str(i)} for i in range(200)]}
        with unchanged():
            response = importer.post("/api/v1/usage/", body, format="json")
        assert response.status_code == 413
        assert "the limit is 10000 bytes" in response.json()["detail"]

    def test_a_full_batch_fits_under_the_default_limit(self, settings):
        # 10,000 records with long names: the largest batch the API takes must fit.
        record = {
            **RECORD,
            "job_id": "12345678_1234+12",
            "user": "u" * 32,
            "allocation": "a" * 48,
            "resource": "GPU H200 " + "x" * 40,
            "charged_at": "2026-03-01T12:00:00.000000+00:00",
        }
        body = json.dumps({"cluster": "c" * 32, "records": [record] * 10_000})
        assert len(body) < settings.DATA_UPLOAD_MAX_MEMORY_SIZE

    def test_a_non_json_body_is_refused(self, importer):
        with unchanged():
            response = importer.post(
                "/api/v1/usage/", "cluster=gpu1", content_type="application/x-www-form-urlencoded"
            )
        assert response.status_code == 415
        assert response.json()["detail"]

    def test_a_usage_batch_that_is_not_a_list_is_refused(self, importer):
        with unchanged():
            response = importer.post(
                "/api/v1/usage/", {"cluster": "gpu1", "records": "all of them"}, format="json"
            )
        assert "records" in refused(response)


class TestEscaping:
    """Names are stored as given and shown as text, never as markup."""

    SCRIPT = '<script>alert("x")</script><img src=x onerror=alert(1)>'

    def test_html_in_names_is_escaped_in_the_admin(self, client, staff, alice):
        project = services.project_create(actor=alice, title=self.SCRIPT, pi=alice)
        client.force_login(staff)
        for url in (
            reverse("admin:allocations_project_changelist"),
            reverse("admin:allocations_project_change", args=[project.pk]),
            reverse("admin:allocations_projectchange_changelist"),
        ):
            page = client.get(url).content.decode()
            assert self.SCRIPT not in page
            assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page

    def test_unicode_and_html_round_trip_through_the_api_as_text(self, allocation, alice, bob):
        title = "Prot\u00e9ines \U0001f9ec " + self.SCRIPT
        Project.objects.filter(pk=allocation.project_id).update(title=title)
        body = client_for(bob).get(f"/api/v1/allocations/{allocation.code}/")
        assert body["Content-Type"] == "application/json"
        assert body.json()["project"] == title
