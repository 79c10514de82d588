import datetime as dt

import pytest

from allocations import services
from allocations.models import Cluster, TaskFailure
from allocations.rollups import rollups_refresh_all
from allocations.tasks import refresh_rollups_task
from tests.conftest import client_for, usage


@pytest.fixture
def charged(allocation, bob, gpu):
    services.usage_record_batch(
        cluster=allocation.cluster,
        records=[
            usage(allocation, bob, gpu, "1", 10),
            usage(allocation, bob, gpu, "2", 5),
        ],
    )
    rollups_refresh_all()
    return allocation


def samples(text: str) -> dict[str, str]:
    return {
        line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


class TestAccess:
    def test_without_credentials_it_is_401(self, db, client):
        response = client.get("/metrics")
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'

    @pytest.mark.parametrize("who", ["alice", "dana"])
    def test_a_user_who_is_not_a_site_admin_is_refused(self, db, request, who):
        assert client_for(request.getfixturevalue(who)).get("/metrics").status_code == 403

    def test_a_site_admin_may_read_them(self, staff):
        response = client_for(staff).get("/metrics")
        assert response.status_code == 200
        assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"

    def test_the_scrapers_token_opens_them(self, db, client, settings):
        settings.METRICS_TOKEN = "s3cret-scrape"
        ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape"})
        wrong = client.get("/metrics", headers={"Authorization": "Bearer guess"})
        assert (ok.status_code, wrong.status_code) == (200, 403)

    def test_with_no_token_configured_no_bearer_gets_in(self, db, client, settings):
        settings.METRICS_TOKEN = ""
        assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 403


class TestValues:
    def test_it_reports_the_ledger_per_cluster(self, charged, pending_request, staff, alice):
        services.change_request_submit(
            actor=alice, allocation=charged, su_delta="50", justification="More"
        )

        values = samples(client_for(staff).get("/metrics").content.decode())

        assert values['su_portal_allocations{cluster="gpu1",status="ACTIVE"}'] == "1"
        assert values['su_portal_allocations{cluster="gpu1",status="DELETED"}'] == "0"
        assert values['su_portal_budget_su{cluster="gpu1"}'] == "1000"
        assert values['su_portal_used_su{cluster="gpu1"}'] == "30"
        assert values['su_portal_held_su{cluster="gpu1"}'] == "0"
        assert values['su_portal_pending_requests{cluster="gpu1"}'] == "1"
        assert values['su_portal_usage_records{cluster="gpu1"}'] == "2"
        assert float(values['su_portal_ingest_last_record_age_seconds{cluster="gpu1"}']) >= 0

    def test_task_failures_are_counted_from_the_database(self, db, staff):
        # As a worker runs it: the error is the task's result, not raised at the caller.
        result = refresh_rollups_task.apply(args=[[[1, "not-a-day"]]], throw=False)

        assert result.failed()

        (failure,) = TaskFailure.objects.all()
        assert failure.task == "allocations.refresh_rollups"
        assert "not-a-day" in failure.error
        values = samples(client_for(staff).get("/metrics").content.decode())
        assert values['su_portal_task_failures{task="allocations.refresh_rollups"}'] == "1"

    def test_label_values_are_escaped(self, db, staff):
        TaskFailure.objects.create(task='odd"name\\x')
        text = client_for(staff).get("/metrics").content.decode()
        assert 'su_portal_task_failures{task="odd\\"name\\\\x"} 1' in text

    def test_a_scrape_costs_the_same_for_one_or_many_clusters(
        self, charged, staff, django_assert_num_queries
    ):
        client = client_for(staff)
        # session, user, clusters, allocations by status, pending requests, rollup job
        # counts, the newest usage rows, task failures, alerts.
        with django_assert_num_queries(9):
            client.get("/metrics")
        for i in range(5):
            Cluster.objects.create(name=f"extra{i}")
        with django_assert_num_queries(9):
            client.get("/metrics")


def test_the_ingest_delay_is_measured_from_the_jobs_end(charged, staff):
    from allocations.models import Usage

    Usage.objects.update(ended_at=Usage.objects.first().recorded_at - dt.timedelta(minutes=5))
    values = samples(client_for(staff).get("/metrics").content.decode())
    assert float(values['su_portal_ingest_delay_seconds{cluster="gpu1"}']) == pytest.approx(
        300, abs=5
    )
