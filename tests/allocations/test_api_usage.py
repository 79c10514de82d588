import datetime as dt
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from accounts.models import User
from accounts.tokens import api_token_issue, api_token_revoke
from allocations import services
from allocations.ingest import MAX_BATCH
from allocations.ledger import ledger_drift
from allocations.models import Allocation, Cluster, Usage, UsageAdjustment
from tests.allocations.dbstate import unchanged
from tests.conftest import make_user

URL = "/api/v1/usage/"


@pytest.fixture
def token(dana, cluster):
    return api_token_issue(actor=dana, cluster=cluster, name="sacct importer")


@pytest.fixture
def importer(token):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.secret}")
    # A first use records last_used_at, so later "nothing changed" checks see no write.
    assert client.get("/api/v1/allocations/").status_code == 200
    return client


def job(job_id="100", user="bob", **extra):
    record = {
        "job_id": job_id,
        "user": user,
        "allocation": "folding-gpu",
        "resource": "GPU H200",
        "count": "2",
        "start": "2026-03-01T10:00:00Z",
        "end": "2026-03-01T13:00:00Z",
    }
    record.update(extra)
    return record


def post(client, *records, cluster="gpu1"):
    return client.post(URL, {"cluster": cluster, "records": list(records)}, format="json")


class TestUsageApi:
    def test_it_charges_a_batch_and_answers_the_same_to_a_retry(self, importer, allocation):
        batch = [job("100"), job("101", user="alice", raw_unit_seconds="7200", count=None)]

        first = post(importer, *batch)
        again = post(importer, *batch)

        # 2 GPUs x 3 h x 2 SU = 12; 2 GPU-hours x 2 SU = 4.
        assert first.status_code == 200, first.json()
        assert first.json() == {
            "created": 2,
            "duplicates": 0,
            "corrected": 0,
            "su_charged": "16.0000",
        }
        assert again.json() == {
            "created": 0,
            "duplicates": 2,
            "corrected": 0,
            "su_charged": "0.0000",
        }
        allocation.refresh_from_db()
        assert allocation.su_used == Decimal("16")
        assert ledger_drift() == []

    def test_a_different_amount_for_a_known_job_is_a_correction(self, importer, allocation):
        post(importer, job("100"))

        response = post(importer, job("100", count="3"))

        assert response.json()["corrected"] == 1
        assert UsageAdjustment.objects.get().su_delta == Decimal("6")
        allocation.refresh_from_db()
        assert allocation.su_used == Decimal("18")

    def test_it_rejects_the_whole_batch_and_lists_every_bad_record(self, importer, allocation):
        with unchanged():
            response = post(
                importer,
                job("1"),
                job("2", user="nobody"),
                job("3", allocation="nope"),
                job("4", count="-1"),
                job("5", end="2026-03-01T09:00:00Z"),
                job("6", start="yesterday"),
                job("7", resource="TPU"),
                job("8", count="NaN"),
                job("9", end=None),
                job("1"),
                job("10", start="2026-03-01T10:00:00", end="2026-03-01T11:00:00"),
                job("11", colour="blue"),
            )
        assert response.status_code == 400
        body = response.json()
        assert body["detail"] == "11 records were rejected; nothing was written."
        assert [(e["index"], e["field"]) for e in body["errors"]] == [
            (1, "user"),
            (2, "allocation"),
            (3, "count"),
            (4, "end"),
            (5, "start"),
            (6, "resource"),
            (7, "count"),
            (8, "charged_at"),
            (9, "job_id"),
            (10, "start"),
            (11, "colour"),
        ]
        messages = {e["index"]: e["message"] for e in body["errors"]}
        assert messages[1] == "unknown user 'nobody'"
        assert messages[3] == "count cannot be negative"

    def test_usage_at_a_time_no_rate_covers_is_rejected_with_the_time(self, importer, allocation):
        with unchanged():
            response = post(importer, job(start="2024-06-01T00:00:00Z", end="2024-06-01T01:00:00Z"))
        assert response.status_code == 400
        assert response.json()["errors"] == [
            {
                "index": 0,
                "field": "charged_at",
                "message": "no rate for GPU H200 on gpu1 at 2024-06-01 01:00:00 UTC",
            }
        ]

    def test_it_refuses_more_than_the_batch_limit(self, importer, allocation):
        with unchanged():
            response = post(importer, *([job()] * (MAX_BATCH + 1)))
        assert response.status_code == 400
        assert response.json()["errors"]["records"] == [
            "At most 10,000 records per batch; this one has 10,001."
        ]

    def test_it_refuses_malformed_json_and_the_wrong_content_type(self, importer, allocation):
        with unchanged():
            broken = importer.post(
                URL, data='{"cluster": "gpu1", "records": [', content_type="application/json"
            )
            form = importer.post(
                URL, data="cluster=gpu1", content_type="application/x-www-form-urlencoded"
            )
            empty = post(importer)
            not_objects = importer.post(
                URL, {"cluster": "gpu1", "records": ["job 1"]}, format="json"
            )
        assert broken.status_code == 400
        assert "JSON parse error" in broken.json()["detail"]
        assert form.status_code == 415
        assert empty.status_code == 400
        assert not_objects.status_code == 400
        assert "records" in not_objects.json()["errors"]

    def test_it_refuses_a_missing_a_revoked_and_another_clusters_token(
        self, token, dana, allocation
    ):
        other = Cluster.objects.create(name="cpu9")
        other.admins.add(dana)
        other_token = api_token_issue(actor=dana, cluster=other, name="other")
        anonymous, foreign = APIClient(), APIClient()
        foreign.credentials(HTTP_AUTHORIZATION=f"Bearer {other_token.secret}")
        revoked = APIClient()
        revoked.credentials(HTTP_AUTHORIZATION=f"Bearer {token.secret}")
        api_token_revoke(actor=dana, token=token.token)
        post(foreign, job())  # its first use records last_used_at
        with unchanged():
            assert post(anonymous, job()).status_code in (401, 403)
            assert post(foreign, job()).status_code == 403
            assert post(revoked, job()).status_code == 401
        assert Usage.objects.count() == 0

    def test_only_the_clusters_admins_may_post_with_a_session(
        self, client, alice, bob, charlie, dana, allocation
    ):
        for person in (alice, bob, charlie):
            session = APIClient()
            session.force_authenticate(person)
            assert post(session, job()).status_code == 403
        admin = APIClient()
        admin.force_authenticate(dana)
        assert post(admin, job()).status_code == 200

    def test_it_resolves_names_in_a_constant_number_of_queries(
        self, importer, allocation, django_assert_max_num_queries
    ):
        post(importer, job("0"))
        small = [job(str(i)) for i in range(1, 3)]
        large = [job(str(i)) for i in range(3, 203)]
        with django_assert_max_num_queries(30) as few:
            post(importer, *small)
        with django_assert_max_num_queries(len(few.captured_queries) + 2):
            post(importer, *large)
        assert Allocation.objects.get().su_used == Decimal(12 * 203)


@pytest.mark.parametrize("when", ["2026-03-01T13:00:00+02:00"])
def test_times_with_an_offset_are_stored_in_utc(when, importer, allocation):
    post(importer, job(end=when))
    assert Usage.objects.get().charged_at == dt.datetime(2026, 3, 1, 11, tzinfo=dt.UTC)


def usual(job_id, user="bob", raw="7200", **extra):
    """A record as allocations.mapping writes it: the shape ingest checks fastest."""
    record = {
        "job_id": job_id,
        "user": user,
        "allocation": "folding-gpu",
        "resource": "GPU H200",
        "raw_unit_seconds": raw,
        "start": "2026-03-01T10:00:00Z",
        "end": "2026-03-01T13:00:00+00:00",
        "charged_at": "2026-03-01T13:00:00+00:00",
    }
    record.update(extra)
    return record


class TestUsualRecords:
    def test_other_spellings_of_a_record_are_charged_as_the_usual_one(self, importer, allocation):
        usual_batch = [usual("1"), usual("2", raw="3600.500"), usual("3", user="alice")]
        other_batch = [
            # Padded names, an integer job id, another case, no charged_at.
            {**usual(" 11 "), "user": " bob", "resource": "gpu h200", "charged_at": None},
            # count with the elapsed time instead of raw_unit_seconds.
            {
                **{k: v for k, v in usual("12").items() if k != "raw_unit_seconds"},
                "count": "0.5",
                "elapsed_seconds": 7201,
            },
            {**usual(13, user="alice"), "allocation": "folding-gpu "},
        ]

        assert post(importer, *usual_batch).status_code == 200
        assert post(importer, *other_batch).status_code == 200

        def charges(job_ids):
            return [
                Usage.objects.values_list(
                    "user__username", "raw_unit_seconds", "su_amount", "charged_at", "started_at"
                ).get(job_id=j)
                for j in job_ids
            ]

        assert charges(["1", "2", "3"]) == charges(["11", "12", "13"])
        assert ledger_drift() == []

    @pytest.mark.parametrize(
        ("fault", "field", "message"),
        [
            ({"raw_unit_seconds": "-1"}, "raw_unit_seconds", "raw_unit_seconds cannot be negative"),
            ({"raw_unit_seconds": "1.0001"}, "raw_unit_seconds", "Give at most 3 decimal places."),
            ({"end": "2026-03-01T13:00:00"}, "end", "end needs a time zone"),
            ({"start": "2026-03-01T14:00:00Z"}, "end", "the job ends before it starts"),
            ({"user": "nobody"}, "user", "unknown user 'nobody'"),
            ({"resource": ["GPU H200"]}, "resource", "resource is required"),
            ({"job_id": "1"}, "job_id", "job 1 appears twice in this batch"),
        ],
    )
    def test_a_usual_record_with_a_fault_is_rejected_with_the_full_checks_message(
        self, importer, allocation, fault, field, message
    ):
        with unchanged():
            response = post(importer, usual("1"), {**usual("2"), **fault})
        assert response.status_code == 400
        assert [(e["index"], e["field"]) for e in response.json()["errors"]] == [(1, field)]
        assert response.json()["errors"][0]["message"].startswith(message)


def test_a_numeric_name_is_resolved_whatever_else_the_batch_holds(importer, allocation, org):
    make_user("1", org)
    services.membership_add(
        actor=allocation.project.pi, allocation=allocation, user=User.objects.get(username="1")
    )

    response = post(importer, usual("1", user=True), usual("2", user=1))

    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"index": 0, "field": "user", "message": "user is required"}
    ]
    assert post(importer, usual("2", user=1)).json()["created"] == 1
