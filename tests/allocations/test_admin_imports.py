"""The admin's "Import usage" pages: upload, the list, an import's progress page, its
rejects CSV and the Resume button, for a cluster admin and nobody else."""

import csv
import gzip
import io

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from allocations.imports import usage_import_create, usage_import_run
from allocations.models import Cluster, UsageImport
from tests.allocations import test_import_usage as samples
from tests.allocations.test_import_usage import CUT_SHORT, SACCT, SACCT_CHARGES
from tests.conftest import make_user

gpu1, site = samples.gpu1, samples.site
State = UsageImport.State


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def url(view: str, *args) -> str:
    return reverse(f"admin:allocations_usageimport_{view}", args=args)


def with_import_perms(user):
    """A cluster admin as the admin site needs them: staff, with the import permissions."""
    user.is_staff = True
    user.save()
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="allocations",
            codename__in=["view_usageimport", "add_usageimport"],
        )
    )
    return user


@pytest.fixture
def as_dana(client, dana):
    client.force_login(with_import_perms(dana))
    return client


def imported(cluster, actor, **kwargs) -> UsageImport:
    usage_import = usage_import_create(
        cluster=cluster,
        fmt="sacct",
        upload=SimpleUploadedFile("sacct-gpu1.txt", SACCT.read_bytes()),
        actor=actor,
        batch_size=4,
        **kwargs,
    )
    usage_import_run(code=usage_import.code)
    usage_import.refresh_from_db()
    return usage_import


class TestUpload:
    def test_a_cluster_admin_uploads_and_lands_on_the_imports_page(
        self, as_dana, site, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=True):
            response = as_dana.post(
                url("add"),
                {
                    "cluster": site.pk,
                    "format": "sacct",
                    "tz": "",
                    "file": SimpleUploadedFile("day.txt.gz", gzip.compress(SACCT.read_bytes())),
                },
            )

        usage_import = UsageImport.objects.get()
        assert response.status_code == 302
        assert response["Location"] == url("change", usage_import.pk)
        assert usage_import.created_by.username == "dana"
        assert usage_import.state == State.DONE  # inline: no broker in tests
        assert usage_import.usage_created == len(SACCT_CHARGES)

    def test_the_form_offers_only_the_users_clusters(self, as_dana, site):
        Cluster.objects.create(name="cpu9", title="Not hers")

        form = as_dana.get(url("add")).context["form"]

        assert list(form.fields["cluster"].queryset) == [site]

    def test_a_truncated_gzip_is_an_error_beside_the_file_and_nothing_is_created(
        self, as_dana, site
    ):
        data = gzip.compress(SACCT.read_bytes())

        response = as_dana.post(
            url("add"),
            {
                "cluster": site.pk,
                "format": "sacct",
                "file": SimpleUploadedFile("day.txt.gz", data[: len(data) // 2]),
            },
        )

        assert response.status_code == 200
        assert "truncated" in response.context["form"].errors["file"][0]
        assert not UsageImport.objects.exists()

    def test_staff_without_the_permission_cannot_open_it(self, client, site):
        eve = make_user("eve", is_staff=True)
        client.force_login(eve)

        assert client.get(url("add")).status_code == 403

    def test_another_clusters_admin_cannot_upload_here(self, client, site):
        erin = with_import_perms(make_user("erin"))
        Cluster.objects.create(name="cpu9", title="Hers").admins.add(erin)
        client.force_login(erin)

        response = client.post(
            url("add"),
            {"cluster": site.pk, "format": "sacct", "file": SimpleUploadedFile("a", b"x")},
        )

        assert "cluster" in response.context["form"].errors
        assert not UsageImport.objects.exists()


class TestPages:
    def test_the_list_shows_state_and_progress_in_constant_queries(self, as_dana, site, dana):
        imported(site, dana)
        as_dana.get(url("changelist"))
        with CaptureQueriesContext(connection) as few:
            as_dana.get(url("changelist"))
        for _ in range(3):
            imported(site, dana)

        with CaptureQueriesContext(connection) as many:
            response = as_dana.get(url("changelist"))

        assert len(response.context["cl"].result_list) == 4
        assert len(many) == len(few)
        assert "100% (50 of 50 rows)" in response.content.decode()

    def test_other_clusters_imports_are_not_listed_or_shown(self, client, site, dana):
        usage_import = imported(site, dana)
        erin = with_import_perms(make_user("erin"))
        client.force_login(erin)

        assert client.get(url("changelist")).context["cl"].result_count == 0
        assert client.get(url("change", usage_import.pk)).status_code == 302  # "does not exist"
        assert client.get(url("rejects", usage_import.pk)).status_code == 404

    def test_the_import_page_shows_counters_and_links_the_rejects(self, as_dana, site, dana):
        usage_import = imported(site, dana)

        page = as_dana.get(url("change", usage_import.pk)).content.decode()

        assert url("rejects", usage_import.pk) in page
        assert "100% (50 of 50 rows)" in page
        assert 'http-equiv="refresh"' not in page  # it is done: nothing to follow
        assert "Resume" not in page

    def test_a_running_import_refreshes_itself(self, as_dana, site, dana):
        usage_import = imported(site, dana)
        UsageImport.objects.filter(pk=usage_import.pk).update(state=State.QUEUED, finished_at=None)

        page = as_dana.get(url("change", usage_import.pk)).content.decode()

        assert 'http-equiv="refresh"' in page

    def test_the_rejects_download_is_csv_with_line_numbers(self, as_dana, site, dana):
        usage_import = imported(site, dana)

        response = as_dana.get(url("rejects", usage_import.pk))

        rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
        assert response["Content-Type"].startswith("text/csv")
        assert rows[0] == ["line", "job_id", "field", "reason"]
        assert rows[1][:3] == [str(CUT_SHORT), "", ""]

    def test_a_failed_import_has_a_resume_button_that_queues_it(
        self, as_dana, site, dana, django_capture_on_commit_callbacks
    ):
        usage_import = imported(site, dana)
        UsageImport.objects.filter(pk=usage_import.pk).update(state=State.FAILED, error="lost")

        page = as_dana.get(url("change", usage_import.pk)).content.decode()
        with django_capture_on_commit_callbacks() as callbacks:
            response = as_dana.post(url("resume", usage_import.pk))

        assert url("resume", usage_import.pk) in page
        assert response.status_code == 302
        assert UsageImport.objects.get().state == State.QUEUED
        assert len(callbacks) == 1

    def test_resuming_a_done_import_is_refused_with_a_message(self, as_dana, site, dana):
        usage_import = imported(site, dana)

        response = as_dana.post(url("resume", usage_import.pk), follow=True)

        assert any("is done" in str(m) for m in get_messages(response.wsgi_request))
        assert UsageImport.objects.get().state == State.DONE
