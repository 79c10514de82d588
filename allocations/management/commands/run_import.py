"""run_import: runs or resumes one background usage import in the foreground."""

import uuid

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from allocations.imports import Outcome, is_stale, usage_import_run
from allocations.models import UsageImport
from allocations.selectors import usage_import_progress

State = UsageImport.State


class Command(BaseCommand):
    help = (
        "Runs the usage import CODE (its uuid, as in the admin and the API) in this process, "
        "from its checkpoint: a queued import, a failed one, or one whose worker died. Every "
        "batch commits its charges with the checkpoint, so nothing is charged or counted "
        "twice however the previous run ended. An import that is still running elsewhere "
        f"is refused until it has given no sign of life for IMPORT_STALE_SECONDS "
        f"({settings.IMPORT_STALE_SECONDS} s), unless --take-over is given."
    )

    def add_arguments(self, parser):
        parser.add_argument("code", type=uuid.UUID, help="The import's code (a uuid).")
        parser.add_argument(
            "--take-over",
            action="store_true",
            help="Run it even though another runner looks alive: only when you know that "
            "runner's process is gone (its writes would be refused anyway).",
        )

    def handle(self, *args, **options):
        code, take_over = options["code"], options["take_over"]
        usage_import = UsageImport.objects.select_related("cluster").filter(code=code).first()
        if usage_import is None:
            raise CommandError(f"There is no import {code}.")
        if usage_import.state == State.DONE:
            self.stdout.write(f"Import {code} is already done.")
            self._summary(usage_import)
            return
        if usage_import.state == State.FAILED:
            # Queued again (not enqueued): this process runs it.
            UsageImport.objects.filter(pk=usage_import.pk, state=State.FAILED).update(
                state=State.QUEUED, finished_at=None
            )
        elif usage_import.state == State.RUNNING and not (take_over or is_stale(usage_import)):
            raise CommandError(
                f"Import {code} is running (last sign of life at "
                f"{usage_import.heartbeat_at:%H:%M:%S} UTC). If its worker is gone, wait until "
                "it is stale or pass --take-over."
            )
        outcome = usage_import_run(code=code, take_over=take_over)
        usage_import.refresh_from_db()
        if outcome == Outcome.BUSY:
            raise CommandError(f"Import {code} is being run by another process.")
        self._summary(usage_import)
        if outcome != Outcome.DONE:
            raise CommandError(f"Import {code} {outcome}: {usage_import.error or 'see the log'}")

    def _summary(self, u: UsageImport) -> None:
        progress = usage_import_progress(u)
        self.stdout.write(
            f"{u.original_name} ({u.format}) on cluster {u.cluster.name}: {u.state}, "
            f"{progress.rows_done:,} of {progress.rows_total:,} rows ({progress.percent}%), "
            f"attempt {u.attempts}. Charged {u.jobs_charged:,} jobs: {u.usage_created:,} "
            f"usage records new, {u.duplicates:,} duplicates, {u.corrected:,} corrected; "
            f"{u.su_charged} SU. Skipped {u.skipped:,}, rejected {u.rejected_lines:,}, "
            f"not charged in rejected batches {u.uncharged_jobs:,}."
        )
