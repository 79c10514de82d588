"""Background imports (allocations/imports.py): uploads checked before anything is stored,
runs that charge a stored file, and resumes after a crash that charge nothing twice.

The samples and the sites they are charged to are test_import_usage's, so a background
import can be held to what the command charges for the same file.
"""

import datetime as dt
import gzip
import json
import uuid
from decimal import Decimal

import pytest
from celery.exceptions import Retry, SoftTimeLimitExceeded
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.utils import timezone

from accounts.tokens import api_token_issue
from allocations import imports
from allocations.imports import (
    ImportNotResumable,
    Outcome,
    usage_import_create,
    usage_import_files_purge,
    usage_import_resume,
    usage_import_run,
    usage_imports_resume_stale,
)
from allocations.ledger import ledger_drift
from allocations.models import Cluster, TresMapping, Usage, UsageImport
from allocations.selectors import usage_import_progress
from allocations.tasks import purge_import_files_task, run_usage_import_task
from tests.allocations import test_import_usage as samples
from tests.allocations.test_import_usage import (
    CUT_SHORT,
    NASA,
    SACCT,
    SACCT_CHARGES,
    SACCT_JOBS,
    SAMPLES,
    expected,
    nasa_jobs,
    used,
)

gpu1, site, ipsc = samples.gpu1, samples.site, samples.ipsc
State = UsageImport.State
# sacct-gpu1.txt: 51 lines, one header, no blank line.
SACCT_ROWS = 50
RESTD = SAMPLES / "slurmrestd-v0.0.40-jobs.json"
COUNTERS = (
    "checkpoint",
    "jobs_charged",
    "usage_created",
    "duplicates",
    "corrected",
    "skipped",
    "rejected_lines",
    "uncharged_jobs",
    "su_charged",
)


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def upload(data: bytes, name: str = "sacct.txt") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


def create(cluster, actor, data: bytes, fmt="sacct", **kwargs) -> UsageImport:
    return usage_import_create(cluster=cluster, fmt=fmt, upload=upload(data), actor=actor, **kwargs)


def counters(usage_import: UsageImport) -> dict:
    usage_import.refresh_from_db()
    return {name: getattr(usage_import, name) for name in COUNTERS}


def reject_rows(usage_import: UsageImport) -> list[tuple]:
    return list(
        usage_import.rejects.order_by("id").values_list("line", "job_id", "field", "reason")
    )


def stored_files(media) -> list:
    return [p for p in media.rglob("*") if p.is_file()] if media.exists() else []


class TestUpload:
    def test_it_stores_the_file_and_queues_its_import_after_commit(
        self, site, dana, django_capture_on_commit_callbacks, _media
    ):
        with django_capture_on_commit_callbacks() as callbacks:
            usage_import = create(site, dana, gzip.compress(SACCT.read_bytes()), tz="UTC")

        assert len(callbacks) == 1  # the task, enqueued once the upload commits
        assert usage_import.state == State.QUEUED
        assert usage_import.created_by == dana
        assert usage_import.rows_total == SACCT_ROWS
        assert usage_import.original_name == "sacct.txt"
        assert usage_import.file.name == f"imports/{usage_import.code}"
        assert stored_files(_media) == [_media / "imports" / str(usage_import.code)]

    def test_a_token_of_the_cluster_may_upload_and_is_recorded(self, site, dana):
        token = api_token_issue(actor=dana, cluster=site, name="sacct").token

        usage_import = usage_import_create(
            cluster=site, fmt="sacct", upload=upload(SACCT.read_bytes()), token=token
        )

        assert usage_import.token == token
        assert usage_import.created_by is None
        assert usage_import.started_by == f"importer:gpu1:{token.prefix}"

    def test_it_counts_slurmrestd_jobs_and_swf_job_lines(self, site, ipsc, dana):
        restd = create(site, dana, RESTD.read_bytes(), "slurmrestd")
        trace = create(ipsc, dana, NASA.read_bytes(), "swf")

        assert restd.rows_total == len(json.loads(RESTD.read_text())["jobs"]) == 19
        assert trace.rows_total == len(nasa_jobs())

    @pytest.mark.parametrize(
        ("data", "fmt", "field", "message"),
        [
            (gzip.compress(SACCT.read_bytes())[:-300], "sacct", "file", "gzip file is truncated"),
            (gzip.compress(SACCT.read_bytes())[:-5], "sacct", "file", "gzip file is truncated"),
            (
                gzip.compress(SACCT.read_bytes())[:40] + b"\xff" * 300,
                "sacct",
                "file",
                "gzip file is corrupt",
            ),
            (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "sacct", "file", "not a text file"),
            (b"", "sacct", "file", "empty"),
            (b"JobID|State\n1|COMPLETED\n", "sacct", "file", "the header has no JobIDRaw"),
            (b'{"jobs": ', "slurmrestd", "file", "not slurmrestd JSON"),
            (b'{"meta": {}}', "slurmrestd", "file", 'No "jobs" list'),
            (SACCT.read_bytes(), "csv", "format", "Choose one of sacct, slurmrestd, swf"),
        ],
        ids=[
            "truncated gzip",
            "gzip without its trailer",
            "corrupt gzip",
            "binary",
            "empty",
            "no sacct header",
            "not JSON",
            "no jobs",
            "unknown format",
        ],
    )
    def test_it_refuses_a_file_no_run_could_read_and_stores_nothing(
        self, site, dana, _media, data, fmt, field, message
    ):
        with pytest.raises(ValidationError) as refused:
            create(site, dana, data, fmt)

        assert message in " ".join(refused.value.message_dict[field])
        assert not UsageImport.objects.exists()
        assert stored_files(_media) == []

    def test_it_refuses_a_file_over_the_size_limit(self, site, dana, settings):
        settings.IMPORT_MAX_UPLOAD_BYTES = 1000

        with pytest.raises(ValidationError, match="at most 1,000 may be uploaded"):
            create(site, dana, SACCT.read_bytes())

        assert not UsageImport.objects.exists()

    def test_it_refuses_text_over_the_limit_however_well_it_compresses(self, site, dana, settings):
        settings.IMPORT_MAX_TEXT_BYTES = 5000

        with pytest.raises(ValidationError, match="text is larger than 5,000 bytes"):
            create(site, dana, gzip.compress(SACCT.read_bytes()))

    @pytest.mark.parametrize(
        ("fmt", "tz", "message"),
        [("swf", "UTC", "for sacct only"), ("sacct", "Mars/Base", "not a time zone")],
    )
    def test_it_refuses_a_zone_it_cannot_use(self, site, ipsc, dana, fmt, tz, message):
        with pytest.raises(ValidationError, match=message):
            create(site, dana, SACCT.read_bytes(), fmt, tz=tz)

    def test_a_cluster_without_mappings_is_refused(self, site, dana):
        TresMapping.objects.all().delete()

        with pytest.raises(ValidationError, match="has no TRES mappings"):
            create(site, dana, SACCT.read_bytes())

    def test_only_the_clusters_admins_and_token_may_upload(
        self, site, alice, bob, charlie, dana, staff
    ):
        other = Cluster.objects.create(name="cpu9", title="Another cluster")
        other_token = api_token_issue(actor=staff, cluster=other, name="x").token

        for outsider in (alice, bob, charlie):
            with pytest.raises(PermissionDenied):
                create(site, outsider, SACCT.read_bytes())
        with pytest.raises(PermissionDenied):
            usage_import_create(
                cluster=site, fmt="sacct", upload=upload(SACCT.read_bytes()), token=other_token
            )
        assert not UsageImport.objects.exists()


class TestRun:
    def test_it_charges_what_the_command_charges_and_keeps_the_rejects(self, site, dana):
        usage_import = create(site, dana, gzip.compress(SACCT.read_bytes()), batch_size=2)

        assert usage_import_run(code=usage_import.code) == Outcome.DONE

        assert used() == expected(SACCT_CHARGES)
        assert counters(usage_import) == {
            "checkpoint": SACCT_ROWS,
            "jobs_charged": SACCT_JOBS,
            "usage_created": len(SACCT_CHARGES),
            "duplicates": 0,
            "corrected": 0,
            "skipped": 37,
            "rejected_lines": 1,
            "uncharged_jobs": 0,
            "su_charged": sum(expected(SACCT_CHARGES).values()),
        }
        [(line, job, field, reason)] = reject_rows(usage_import)
        assert (line, job, field) == (CUT_SHORT, "", "")
        assert reason.startswith("9 fields, the header has 11")
        assert usage_import.state == State.DONE
        assert usage_import.runner is None
        assert usage_import.finished_at is not None
        assert usage_import.bytes_read == usage_import.size
        assert usage_import.lines_read == 51
        assert usage_import_progress(usage_import).percent == 100
        assert ledger_drift() == []

    def test_rejected_batches_are_reported_by_line(self, gpu1, dana):
        # dave is not a member of phys-ml: the one batch holding his jobs charges nothing.
        usage_import = create(gpu1, dana, SACCT.read_bytes(), batch_size=1000)

        usage_import_run(code=usage_import.code)

        assert Usage.objects.count() == 0
        assert reject_rows(usage_import)[1:] == [
            (28, "4950", "user", "dave is not a member of phys-ml"),
            (40, "4970", "user", "dave is not a member of phys-ml"),
        ]
        assert counters(usage_import)["rejected_lines"] == 3
        assert counters(usage_import)["uncharged_jobs"] == SACCT_JOBS - 2

    def test_slurmrestd_charges_the_same_jobs_and_rejects_by_index(self, site, dana):
        usage_import = create(site, dana, RESTD.read_bytes(), "slurmrestd", batch_size=3)

        assert usage_import_run(code=usage_import.code) == Outcome.DONE

        assert used() == expected(SACCT_CHARGES)
        # jobs[15], job 4980, lost its time and tres: the counterpart of sacct's line 46.
        assert [row[:2] for row in reject_rows(usage_import)] == [(15, "")]
        assert counters(usage_import)["checkpoint"] == usage_import.rows_total
        assert ledger_drift() == []

    def test_a_file_broken_after_upload_fails_the_import_with_the_reason(self, site, dana):
        usage_import = create(site, dana, gzip.compress(SACCT.read_bytes()))
        data = gzip.compress(SACCT.read_bytes())
        with usage_import.file.storage.open(usage_import.file.name, "wb") as broken:
            broken.write(data[: len(data) // 2])

        assert usage_import_run(code=usage_import.code) == Outcome.FAILED

        usage_import.refresh_from_db()
        assert usage_import.state == State.FAILED
        assert "truncated gzip" in usage_import.error
        assert usage_import.runner is None
        assert Usage.objects.count() == 0

    def test_a_running_import_is_not_run_twice(self, site, dana):
        usage_import = create(site, dana, SACCT.read_bytes())
        UsageImport.objects.filter(pk=usage_import.pk).update(
            state=State.RUNNING, heartbeat_at=timezone.now()
        )

        assert usage_import_run(code=usage_import.code) == Outcome.BUSY
        assert Usage.objects.count() == 0

    def test_a_done_import_is_not_run_again(self, site, dana):
        usage_import = create(site, dana, SACCT.read_bytes())
        usage_import_run(code=usage_import.code)
        before = counters(usage_import)

        assert usage_import_run(code=usage_import.code) == Outcome.BUSY
        assert counters(usage_import) == before

    def test_a_runner_taken_over_stops_without_writing(self, site, dana, monkeypatch):
        usage_import = create(site, dana, SACCT.read_bytes(), batch_size=2)
        calls = []
        other = uuid.uuid4()

        def committed(self, *, accepted):
            calls.append(1)
            if len(calls) == 20:
                # Another runner claims the import between two batches of this one.
                UsageImport.objects.filter(pk=usage_import.pk).update(runner=other)

        monkeypatch.setattr(imports._StoredRun, "committed", committed)

        assert usage_import_run(code=usage_import.code) == Outcome.LOST

        usage_import.refresh_from_db()
        assert usage_import.runner == other
        assert 0 < Usage.objects.count() < len(SACCT_CHARGES)
        # What this runner committed is counted, and its last batch left nothing.
        assert usage_import.usage_created == Usage.objects.count()
        assert ledger_drift() == []


def _crash_after(monkeypatch, batch: int, where: str) -> None:
    """The worker 'dies' after charging batch `batch`: in the charge, or in the
    bookkeeping that follows it in the same transaction."""
    calls = []
    if where == "charge":
        real = imports.usage_ingest

        def ingest(**kwargs):
            result = real(**kwargs)
            calls.append(1)
            if len(calls) == batch:
                raise RuntimeError("worker lost")
            return result

        monkeypatch.setattr(imports, "usage_ingest", ingest)
    else:
        real_commit = imports._StoredRun.commit

        def commit(self, **kwargs):
            real_commit(self, **kwargs)
            calls.append(1)
            if len(calls) == batch:
                raise RuntimeError("worker lost")

        monkeypatch.setattr(imports._StoredRun, "commit", commit)


def _snapshot(usage_import) -> dict:
    return {
        "counters": counters(usage_import),
        "rejects": sorted(reject_rows(usage_import), key=str),
        "used": used(),
        "usage": sorted(Usage.objects.values_list("job_id", "resource__name", "su_amount")),
    }


class TestResume:
    @pytest.fixture
    def trace(self, ipsc, dana):
        """The NASA trace with u18 no member: his line is rejected, with his batch's others."""
        return create(ipsc, dana, gzip.compress(NASA.read_bytes()), "swf", batch_size=5)

    def _uninterrupted(self, usage_import) -> dict:
        with transaction.atomic():
            usage_import_run(code=usage_import.code)
            result = _snapshot(usage_import)
            transaction.set_rollback(True)
        return result

    @pytest.mark.parametrize("where", ["charge", "bookkeeping"])
    @pytest.mark.parametrize("batch", [1, 7, 30])
    def test_a_crash_after_any_batch_resumes_to_the_uninterrupted_result(
        self, trace, dana, monkeypatch, batch, where
    ):
        whole = self._uninterrupted(trace)
        assert whole["counters"]["rejected_lines"] == 1
        assert whole["counters"]["uncharged_jobs"] > 0  # u18's batch charged nothing

        with monkeypatch.context() as patch:
            _crash_after(patch, batch, where)
            assert usage_import_run(code=trace.code) == Outcome.FAILED
        trace.refresh_from_db()
        assert trace.state == State.FAILED
        assert "worker lost" in trace.error
        # Batches before the crash stand; the crashed one left no trace.
        committed = Usage.objects.count()
        assert trace.checkpoint > 0 or batch == 1
        assert trace.usage_created == committed

        usage_import_resume(usage_import=trace, actor=dana)
        assert usage_import_run(code=trace.code) == Outcome.DONE

        assert _snapshot(trace) == whole
        assert trace.duplicates == 0  # nothing committed was posted again
        assert trace.attempts == 2
        assert ledger_drift() == []

    def test_a_task_out_of_time_hands_over_from_its_checkpoint(self, trace, monkeypatch):
        whole = self._uninterrupted(trace)
        real = imports.usage_ingest
        calls = []

        def ingest(**kwargs):
            calls.append(1)
            if len(calls) == 10:
                raise SoftTimeLimitExceeded
            return real(**kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(imports, "usage_ingest", ingest)
            assert usage_import_run(code=trace.code) == Outcome.PAUSED
        trace.refresh_from_db()
        assert (trace.state, trace.runner, trace.error) == (State.QUEUED, None, "")
        assert 0 < trace.checkpoint < trace.rows_total

        assert usage_import_run(code=trace.code) == Outcome.DONE
        assert _snapshot(trace) == whole

    def test_only_failed_or_stale_imports_are_resumed(self, trace, dana, charlie, settings):
        with pytest.raises(ImportNotResumable, match="queued"):
            usage_import_resume(usage_import=trace, actor=dana)
        with pytest.raises(PermissionDenied):
            usage_import_resume(usage_import=trace, actor=charlie)

        UsageImport.objects.filter(pk=trace.pk).update(
            state=State.RUNNING,
            heartbeat_at=timezone.now() - dt.timedelta(seconds=settings.IMPORT_STALE_SECONDS + 1),
        )
        resumed = usage_import_resume(usage_import=trace, actor=dana)

        assert resumed.state == State.QUEUED

    def test_the_sweep_resumes_stale_imports_and_the_task_finishes_them(
        self, trace, settings, django_capture_on_commit_callbacks
    ):
        UsageImport.objects.filter(pk=trace.pk).update(
            state=State.RUNNING,
            runner=trace.code,
            heartbeat_at=timezone.now() - dt.timedelta(seconds=settings.IMPORT_STALE_SECONDS + 1),
        )

        with django_capture_on_commit_callbacks(execute=True):
            assert usage_imports_resume_stale() == 1

        trace.refresh_from_db()
        assert trace.state == State.DONE
        assert trace.jobs_charged + trace.uncharged_jobs + 1 == len(nasa_jobs())
        assert usage_imports_resume_stale() == 0


class TestProgress:
    def test_it_derives_percent_speed_and_eta_from_the_checkpoint(self):
        now = timezone.now()
        usage_import = UsageImport(
            state=State.RUNNING,
            rows_total=1000,
            checkpoint=400,
            resumed_from=100,
            size=10,
            started_at=now - dt.timedelta(seconds=60),
            heartbeat_at=now - dt.timedelta(seconds=10),
        )

        progress = usage_import_progress(usage_import, now=now)

        # 300 rows in the 50 s between start and heartbeat: 6 rows/s; 600 rows to go take
        # 100 s from the heartbeat, 10 s of which have passed.
        assert progress.percent == 40
        assert progress.rows_per_second == Decimal("6.0")
        assert progress.eta_seconds == 90

    def test_it_is_never_100_before_the_end_and_has_no_speed_when_not_running(self):
        usage_import = UsageImport(state=State.FAILED, rows_total=10, checkpoint=10, size=1)

        progress = usage_import_progress(usage_import)

        assert progress.percent == 99
        assert progress.rows_per_second is None
        assert progress.eta_seconds is None


class TestTask:
    def test_it_is_acknowledged_late_and_given_back_when_its_worker_dies(self):
        assert run_usage_import_task.acks_late
        assert run_usage_import_task.reject_on_worker_lost
        assert run_usage_import_task.soft_time_limit < run_usage_import_task.time_limit

    def _deliver(self, code, monkeypatch) -> list:
        """Runs the task as a worker does (not eagerly); returns the retries it asked for."""
        retries = []

        def retry(countdown):
            retries.append(countdown)
            return Retry()

        monkeypatch.setattr(run_usage_import_task, "retry", retry)
        run_usage_import_task.push_request(is_eager=False)
        try:
            run_usage_import_task.run(str(code))
        except Retry:
            pass
        finally:
            run_usage_import_task.pop_request()
        return retries

    def test_a_redelivery_waits_for_a_live_runners_heartbeat_to_go_stale(
        self, site, dana, settings, monkeypatch
    ):
        usage_import = create(site, dana, SACCT.read_bytes())
        UsageImport.objects.filter(pk=usage_import.pk).update(
            state=State.RUNNING, runner=usage_import.code, heartbeat_at=timezone.now()
        )

        assert self._deliver(usage_import.code, monkeypatch) == [settings.IMPORT_STALE_SECONDS]
        assert Usage.objects.count() == 0

    def test_a_redelivery_of_a_finished_import_does_nothing(self, site, dana, monkeypatch):
        usage_import = create(site, dana, SACCT.read_bytes())
        usage_import_run(code=usage_import.code)
        before = counters(usage_import)

        assert self._deliver(usage_import.code, monkeypatch) == []
        assert counters(usage_import) == before


class TestFileRetention:
    """A done import's file is deleted IMPORT_FILE_RETENTION_DAYS after it finished; its
    record, counters and rejects stay."""

    def finished(self, cluster, actor, days_ago: int) -> UsageImport:
        usage_import = create(cluster, actor, SACCT.read_bytes())
        assert usage_import_run(code=usage_import.code) == Outcome.DONE
        UsageImport.objects.filter(pk=usage_import.pk).update(
            finished_at=timezone.now() - dt.timedelta(days=days_ago)
        )
        return usage_import

    def test_old_done_files_go_and_everything_else_stays(
        self, site, dana, settings, _media, django_capture_on_commit_callbacks
    ):
        settings.IMPORT_FILE_RETENTION_DAYS = 30
        old = self.finished(site, dana, 31)
        recent = self.finished(site, dana, 29)
        failed = create(site, dana, SACCT.read_bytes())
        UsageImport.objects.filter(pk=failed.pk).update(
            state=State.FAILED,
            error="worker lost",
            finished_at=timezone.now() - dt.timedelta(days=90),
        )
        before = counters(old), reject_rows(old)

        with django_capture_on_commit_callbacks(execute=True):
            assert purge_import_files_task.delay().get() == 1

        old.refresh_from_db()
        assert old.file.name == ""
        assert (counters(old), reject_rows(old)) == before
        assert sorted(stored_files(_media)) == sorted(
            _media / "imports" / str(i.code) for i in (recent, failed)
        )
        # A second sweep finds nothing more to do.
        with django_capture_on_commit_callbacks(execute=True):
            assert purge_import_files_task.delay().get() == 0

    def test_zero_days_keeps_every_file(self, site, dana, settings, _media):
        settings.IMPORT_FILE_RETENTION_DAYS = 0
        self.finished(site, dana, 400)

        assert usage_import_files_purge() == 0
        assert len(stored_files(_media)) == 1

    def test_a_purged_done_import_still_shows_its_rejects_in_the_api(
        self, site, dana, settings, client, django_capture_on_commit_callbacks
    ):
        settings.IMPORT_FILE_RETENTION_DAYS = 1
        usage_import = self.finished(site, dana, 2)
        with django_capture_on_commit_callbacks(execute=True):
            usage_import_files_purge()
        client.force_login(dana)

        response = client.get(f"/api/v1/imports/{usage_import.code}/rejects/")

        assert response.status_code == 200
        assert b"9 fields, the header has 11" in response.getvalue()
