"""run_import: an import run in the foreground, and on PostgreSQL a real worker killed with
SIGKILL mid-file, then resumed: the totals are an uninterrupted import's, nothing is
charged or rejected twice, and the ledger has no drift."""

import io
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from accounts.models import User
from allocations import imports, services
from allocations.imports import usage_import_create
from allocations.ledger import ledger_drift
from allocations.models import Allocation, Usage, UsageImport
from tests.allocations import test_import_usage as samples
from tests.allocations.test_import_usage import NASA, NASA_RATE, SACCT, nasa_jobs, su, used

ipsc, site, gpu1 = samples.ipsc, samples.site, samples.gpu1
State = UsageImport.State
BASE_DIR = Path(settings.BASE_DIR)


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def run(*args) -> str:
    out = io.StringIO()
    call_command("run_import", *map(str, args), stdout=out)
    return out.getvalue()


def queued(cluster, actor, path=SACCT, fmt="sacct", batch_size=3) -> UsageImport:
    return usage_import_create(
        cluster=cluster,
        fmt=fmt,
        upload=SimpleUploadedFile(path.name, path.read_bytes()),
        actor=actor,
        batch_size=batch_size,
    )


class TestRunImport:
    def test_it_runs_a_queued_import_and_says_what_it_charged(self, site, dana):
        usage_import = queued(site, dana)

        out = run(usage_import.code)

        usage_import.refresh_from_db()
        assert usage_import.state == State.DONE
        assert "sacct-gpu1.txt (sacct) on cluster gpu1: done, 50 of 50 rows (100%)" in out
        assert f"{usage_import.su_charged} SU. Skipped 37, rejected 1" in out

    def test_a_done_import_is_left_alone(self, site, dana):
        usage_import = queued(site, dana)
        run(usage_import.code)

        assert "is already done" in run(usage_import.code)
        assert UsageImport.objects.get().attempts == 1

    def test_a_failed_import_is_resumed(self, site, dana):
        usage_import = queued(site, dana)
        UsageImport.objects.filter(pk=usage_import.pk).update(
            state=State.FAILED, finished_at=timezone.now(), error="worker lost"
        )

        run(usage_import.code)

        usage_import.refresh_from_db()
        assert usage_import.state == State.DONE
        assert usage_import.error == ""

    def test_a_live_runner_is_refused_unless_taken_over(self, site, dana):
        usage_import = queued(site, dana)
        UsageImport.objects.filter(pk=usage_import.pk).update(
            state=State.RUNNING, runner=usage_import.code, heartbeat_at=timezone.now()
        )

        with pytest.raises(CommandError, match="is running"):
            run(usage_import.code)
        assert Usage.objects.count() == 0

        run(usage_import.code, "--take-over")
        assert UsageImport.objects.get().state == State.DONE

    def test_an_unknown_code_is_a_clear_error(self, db):
        with pytest.raises(CommandError, match="There is no import"):
            run("6b1f0a56-8f9e-4d7e-9a43-3c7a0cc1d2e4")


# --- a real kill -------------------------------------------------------------------------

COPIES = 5  # the NASA trace five times over, under other job ids: 1,090 jobs
BROKEN = "this line is cut short"


def long_trace(path: Path) -> tuple[Path, list[tuple[str, str, int]], int]:
    """A long SWF file: the NASA trace's header, its jobs COPIES times under new job ids,
    and one broken line in the middle. Returns the file, its (job, group, node-seconds),
    and the broken line's number."""
    lines = NASA.read_text().splitlines()
    header = [line for line in lines if line.startswith(";")]
    body = [line for line in lines if line.strip() and not line.startswith(";")]
    out = list(header)
    jobs = []
    broken_at = 0
    for copy in range(COPIES):
        for line in body:
            fields = line.split()
            fields[0] = str(copy * 100_000 + int(fields[0]))
            out.append(" ".join(fields))
        if copy == COPIES // 2:
            out.append(BROKEN)
            broken_at = len(out)
    for _, job, _, group, node_seconds in nasa_jobs():
        for copy in range(COPIES):
            jobs.append((str(copy * 100_000 + int(job)), group, node_seconds))
    path.write_text("\n".join(out) + "\n")
    return path, jobs, broken_at


def _subprocess_env(media: Path) -> dict:
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    if db.get("PASSWORD"):
        url = url.replace("@", f":{db['PASSWORD']}@", 1)
    return {
        **os.environ,
        "DATABASE_URL": url,
        "MEDIA_ROOT": str(media),
        "SECRET_KEY": "x",
        "CELERY_BROKER_URL": "",
    }


def _run_import(code, env, *args) -> subprocess.Popen:
    return subprocess.Popen(  # noqa: S603 (this checkout's manage.py, fixed arguments)
        [sys.executable, "manage.py", "run_import", str(code), *args],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_checkpoint(usage_import: UsageImport, process, at_least: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        usage_import.refresh_from_db()
        if usage_import.checkpoint >= at_least:
            return
        if process.poll() is not None:
            pytest.fail(f"run_import ended before it was killed: {process.communicate()}")
        time.sleep(0.02)
    pytest.fail("run_import made no progress")


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="a second process needs a database server; SQLite's test database is in memory",
)
@pytest.mark.django_db(transaction=True)
class TestKilledWorker:
    def test_a_run_killed_mid_file_is_resumed_with_nothing_charged_twice(
        self, ipsc, alice, dana, tmp_path, _media, monkeypatch
    ):
        # Here the worker is run_import in another process, not the inline task.
        monkeypatch.setattr(imports, "_enqueue", lambda usage_import: None)
        services.membership_add(
            actor=alice,
            allocation=Allocation.objects.get(name="g1"),
            user=User.objects.get(username="u18"),
        )
        path, jobs, broken_at = long_trace(tmp_path / "nasa-long.swf")
        usage_import = queued(ipsc, dana, path, "swf", batch_size=2)
        env = _subprocess_env(_media)

        first = _run_import(usage_import.code, env)
        _wait_for_checkpoint(usage_import, first, at_least=20)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)

        usage_import.refresh_from_db()
        assert usage_import.state == State.RUNNING  # as a dead worker leaves it
        assert 20 <= usage_import.checkpoint < usage_import.rows_total
        killed_at = usage_import.checkpoint
        # What the dead run committed is exactly what its counters say.
        assert Usage.objects.count() == usage_import.usage_created
        assert ledger_drift() == []

        refused = _run_import(usage_import.code, env)
        assert refused.wait(timeout=60) == 1
        assert "is running" in refused.communicate()[1]

        second = _run_import(usage_import.code, env, "--take-over")
        _, err = second.communicate(timeout=300)
        assert second.returncode == 0, err

        usage_import.refresh_from_db()
        totals = defaultdict(Decimal)
        for _, group, node_seconds in jobs:
            totals[group] += su(node_seconds, 1, NASA_RATE)
        assert usage_import.state == State.DONE
        assert usage_import.attempts == 2
        assert usage_import.resumed_from >= killed_at
        assert usage_import.checkpoint == usage_import.rows_total == len(jobs) + 1
        assert usage_import.jobs_charged == usage_import.usage_created == len(jobs)
        assert usage_import.duplicates == 0  # no committed batch was posted again
        assert usage_import.uncharged_jobs == 0
        assert usage_import.su_charged == sum(totals.values())
        assert used() == dict(totals)
        assert Usage.objects.count() == len(jobs)
        assert list(usage_import.rejects.values_list("line", "job_id")) == [(broken_at, "")]
        assert usage_import.rejected_lines == 1
        assert ledger_drift() == []
        verify = subprocess.run(
            [sys.executable, "manage.py", "verify_ledger"],
            cwd=BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
