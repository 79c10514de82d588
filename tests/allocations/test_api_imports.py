"""/api/v1/imports/: who may upload, see, download rejects of and resume an import."""

import csv
import gzip
import io
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.tokens import api_token_issue
from allocations import services
from allocations.imports import usage_import_create, usage_import_run
from allocations.models import Cluster, Resource, TresMapping, UsageImport
from tests.allocations import test_import_usage as samples
from tests.allocations.test_import_usage import CUT_SHORT, SACCT, SACCT_CHARGES
from tests.conftest import RATE_START, client_for, make_user

gpu1, site = samples.gpu1, samples.site
URL = "/api/v1/imports/"
State = UsageImport.State


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def token(site, dana):
    return api_token_issue(actor=dana, cluster=site, name="sacct importer")


@pytest.fixture
def elsewhere(staff):
    """Another cluster, with its admin erin."""
    other = Cluster.objects.create(name="cpu9", title="Another cluster")
    erin = make_user("erin")
    other.admins.add(erin)
    return other, erin


def post(client, data: bytes, *, cluster="gpu1", fmt="sacct", name="sacct.txt", **extra):
    body = {"cluster": cluster, "format": fmt, "file": SimpleUploadedFile(name, data), **extra}
    return client.post(URL, body, format="multipart")


def done_import(cluster, actor) -> UsageImport:
    usage_import = usage_import_create(
        cluster=cluster,
        fmt="sacct",
        upload=SimpleUploadedFile("sacct.txt", SACCT.read_bytes()),
        actor=actor,
        batch_size=3,
    )
    usage_import_run(code=usage_import.code)
    usage_import.refresh_from_db()
    return usage_import


class TestUpload:
    def test_a_cluster_admin_uploads_and_gets_202_with_the_queued_import(
        self, site, dana, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks() as callbacks:
            response = post(client_for(dana), gzip.compress(SACCT.read_bytes()), tz="UTC")

        assert response.status_code == 202, response.content
        body = response.json()
        assert body["state"] == "queued"
        assert body["started_by"] == "dana"
        assert body["cluster"] == "gpu1"
        assert body["progress"]["rows_total"] == 50
        assert body["progress"]["percent"] == 0
        assert body["links"]["rejects"].endswith(f"{URL}{body['code']}/rejects/")
        assert len(callbacks) == 1
        assert UsageImport.objects.get().code.hex == body["code"].replace("-", "")

    def test_the_task_runs_it_after_commit(self, site, dana, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=True):
            response = post(client_for(dana), SACCT.read_bytes())

        detail = client_for(dana).get(response.json()["links"]["self"]).json()
        assert detail["state"] == "done"
        assert detail["progress"]["percent"] == 100
        assert detail["counters"]["usage_created"] == len(SACCT_CHARGES)
        assert detail["counters"]["rejected_lines"] == 1

    def test_the_clusters_token_uploads_for_its_cluster(self, site, token):
        response = post(client_for(secret=token.secret), SACCT.read_bytes())

        assert response.status_code == 202
        assert response.json()["started_by"] == f"importer:gpu1:{token.token.prefix}"
        assert UsageImport.objects.get().token == token.token

    def test_a_token_may_not_upload_for_another_cluster(self, site, token, elsewhere):
        response = post(client_for(secret=token.secret), SACCT.read_bytes(), cluster="cpu9")

        assert response.status_code == 403
        assert not UsageImport.objects.exists()

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie", "erin"])
    def test_owner_member_outsider_and_other_admins_may_not_upload(
        self, request, site, elsewhere, who
    ):
        user = elsewhere[1] if who == "erin" else request.getfixturevalue(who)

        response = post(client_for(user), SACCT.read_bytes())

        assert response.status_code == 403
        assert not UsageImport.objects.exists()

    def test_anonymous_is_refused(self, site):
        assert post(client_for(), SACCT.read_bytes()).status_code in (401, 403)

    def test_a_truncated_gzip_is_a_400_on_the_file_and_nothing_is_created(
        self, site, dana, tmp_path
    ):
        data = gzip.compress(SACCT.read_bytes())

        response = post(client_for(dana), data[: len(data) // 2], name="sacct.txt.gz")

        assert response.status_code == 400
        assert "truncated" in response.json()["errors"]["file"][0]
        assert not UsageImport.objects.exists()
        assert not (tmp_path / "media").exists()

    def test_bad_fields_get_field_level_messages(self, site, dana):
        client = client_for(dana)

        unknown = post(client, SACCT.read_bytes(), fmt="csv").json()
        missing = client.post(URL, {"cluster": "gpu1", "format": "sacct"}, format="multipart")
        zone = post(client, SACCT.read_bytes(), tz="Mars/Base").json()

        assert "format" in unknown["errors"]
        assert missing.status_code == 400
        assert "file" in missing.json()["errors"]
        assert "not a time zone" in zone["errors"]["tz"][0]
        assert not UsageImport.objects.exists()

    def test_an_unknown_cluster_is_404(self, site, staff):
        assert post(client_for(staff), SACCT.read_bytes(), cluster="nope").status_code == 404


class TestRead:
    def test_each_caller_lists_only_the_imports_it_may_see(
        self, site, dana, staff, token, elsewhere, alice, bob, charlie
    ):
        other, erin = elsewhere
        ours = done_import(site, dana)
        TresMapping.objects.create(cluster=other, tres="cpu", resource=_cpu_of(other))
        theirs = usage_import_create(
            cluster=other,
            fmt="sacct",
            upload=SimpleUploadedFile("x.txt", SACCT.read_bytes()),
            actor=erin,
        )

        def codes(client):
            response = client.get(URL)
            assert response.status_code == 200
            return {row["code"] for row in response.json()["results"]}

        assert codes(client_for(dana)) == {str(ours.code)}
        assert codes(client_for(secret=token.secret)) == {str(ours.code)}
        assert codes(client_for(erin)) == {str(theirs.code)}
        assert codes(client_for(staff)) == {str(ours.code), str(theirs.code)}
        for user in (alice, bob, charlie):
            assert codes(client_for(user)) == set()
            assert client_for(user).get(f"{URL}{ours.code}/").status_code == 404
        assert client_for(erin).get(f"{URL}{ours.code}/").status_code == 404

    def test_the_list_costs_the_same_queries_for_many_imports(
        self, site, dana, django_assert_num_queries
    ):
        for _ in range(3):
            done_import(site, dana)
        client = client_for(dana)
        client.get(URL)  # the session, warm

        # session, user, count, the imports with cluster, starter and token
        with django_assert_num_queries(4):
            response = client.get(URL)
        assert response.json()["count"] == 3

    def test_the_detail_shows_state_progress_counters_and_links(self, site, dana):
        usage_import = done_import(site, dana)

        body = client_for(dana).get(f"{URL}{usage_import.code}/").json()

        assert body["state"] == "done"
        assert body["progress"] == {
            "percent": 100,
            "rows_done": 50,
            "rows_total": 50,
            "rows_per_second": None,
            "eta_seconds": None,
            "bytes_read": SACCT.stat().st_size,
            "lines_read": 51,
        }
        assert body["counters"]["jobs_charged"] == usage_import.jobs_charged
        assert body["counters"]["su_charged"] == f"{usage_import.su_charged:.4f}"
        assert set(body["links"]) == {"self", "rejects", "resume"}

    def test_rejects_download_as_csv_with_line_numbers(self, site, dana, token):
        usage_import = done_import(site, dana)

        for client in (client_for(dana), client_for(secret=token.secret)):
            response = client.get(f"{URL}{usage_import.code}/rejects/", HTTP_ACCEPT="text/csv")
            assert response.status_code == 200
            assert response["Content-Type"].startswith("text/csv")
            rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
            assert rows[0] == ["line", "job_id", "field", "reason"]
            assert [row[:3] for row in rows[1:]] == [[str(CUT_SHORT), "", ""]]
            assert rows[1][3].startswith("9 fields, the header has 11")

    def test_rejects_of_an_import_one_may_not_see_are_404(self, site, dana, charlie, elsewhere):
        usage_import = done_import(site, dana)

        for user in (charlie, elsewhere[1]):
            assert client_for(user).get(f"{URL}{usage_import.code}/rejects/").status_code == 404


def _cpu_of(cluster):
    cpu = Resource.objects.create(cluster=cluster, name="CPU", kind="CPU", unit="core")
    services.rate_add(actor=None, resource=cpu, su_per_unit_hour=Decimal(1), start=RATE_START)
    return cpu


class TestResume:
    def test_a_failed_import_is_queued_again_and_finishes(
        self, site, dana, token, django_capture_on_commit_callbacks
    ):
        usage_import = done_import(site, dana)
        UsageImport.objects.filter(pk=usage_import.pk).update(state=State.FAILED, error="lost")

        with django_capture_on_commit_callbacks() as callbacks:
            response = client_for(secret=token.secret).post(f"{URL}{usage_import.code}/resume/")

        assert response.status_code == 202, response.content
        assert response.json()["state"] == "queued"
        assert len(callbacks) == 1

    def test_a_done_import_is_409(self, site, dana):
        usage_import = done_import(site, dana)

        response = client_for(dana).post(f"{URL}{usage_import.code}/resume/")

        assert response.status_code == 409
        assert "is done" in response.json()["detail"]

    def test_outsiders_get_404(self, site, dana, alice, charlie):
        usage_import = done_import(site, dana)
        UsageImport.objects.filter(pk=usage_import.pk).update(state=State.FAILED)

        for user in (alice, charlie):
            assert client_for(user).post(f"{URL}{usage_import.code}/resume/").status_code == 404
        assert UsageImport.objects.get().state == State.FAILED
