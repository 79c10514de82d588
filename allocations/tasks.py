"""Celery tasks: thin, id-based, idempotent (so acks_late redelivery is safe).

Time limits: the global CELERY_TASK_SOFT_TIME_LIMIT / CELERY_TASK_TIME_LIMIT apply to
every task; the periodic sweeps below name their own, sized to the work they do.
"""

import logging
import os
import socket

from celery import shared_task
from celery.signals import task_failure
from django.conf import settings
from django.db import transaction

logger = logging.getLogger("allocations")

# The periodic sweeps walk whole tables; a soft limit leaves them time to roll back.
SWEEP_LIMITS = {"soft_time_limit": 30 * 60, "time_limit": 31 * 60}


@shared_task(name="allocations.rerate_usage", acks_late=True)
def rerate_usage_task(correction_id: int) -> int:
    from allocations.adjustments import rerate_usage
    from allocations.models import RateCorrection

    correction = RateCorrection.objects.filter(pk=correction_id).first()
    if correction is None:
        return 0
    return rerate_usage(correction=correction)


@shared_task(name="allocations.expire_holds", acks_late=True)
def expire_holds_task() -> int:
    from allocations.admission import holds_expire

    return holds_expire()


@shared_task(
    name="allocations.run_usage_import",
    bind=True,
    acks_late=True,
    # A worker killed mid-file gives the message back, and the import is resumed from
    # its checkpoint: every batch commits its charge and its checkpoint together.
    reject_on_worker_lost=True,
    soft_time_limit=settings.IMPORT_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.IMPORT_TASK_TIME_LIMIT,
    # Retries only wait for a dead runner's heartbeat to go stale (or a live one to end).
    max_retries=None,
)
def run_usage_import_task(self, code: str) -> str:
    from allocations.imports import Outcome, usage_import_run
    from allocations.models import UsageImport

    outcome = usage_import_run(code=code)
    if outcome == Outcome.PAUSED:
        run_usage_import_task.delay(code)
    elif (
        outcome == Outcome.BUSY
        and not self.request.is_eager
        # A redelivery after its worker died finds the import still marked running.
        and UsageImport.objects.filter(code=code, state=UsageImport.State.RUNNING).exists()
    ):
        raise self.retry(countdown=settings.IMPORT_STALE_SECONDS)
    return str(outcome)


@shared_task(name="allocations.resume_stale_imports", acks_late=True)
def resume_stale_imports_task() -> int:
    from allocations.imports import usage_imports_resume_stale

    return usage_imports_resume_stale()


@shared_task(name="allocations.purge_import_files", acks_late=True, **SWEEP_LIMITS)
def purge_import_files_task() -> int:
    from allocations.imports import usage_import_files_purge

    return usage_import_files_purge()


# At most once, unlike the tasks above: a redelivered message would e-mail people twice,
# and a lost notification is the lesser harm (the portal shows every step anyway).
@shared_task(name="allocations.send_request_emails", acks_late=False)
def send_request_emails_task(event_id: int) -> int:
    from allocations.notifications import send_request_emails

    return send_request_emails(event_id=event_id)


@shared_task(
    name="allocations.refresh_rollups", acks_late=True, soft_time_limit=120, time_limit=150
)
def refresh_rollups_task(pairs: list[list]) -> int:
    """Recomputes the rollups of [allocation id, "YYYY-MM-DD"] keys (rollups_touched)."""
    from allocations.rollups import rollups_refresh_pairs

    return rollups_refresh_pairs(pairs)


@shared_task(name="allocations.refresh_all_rollups", acks_late=True, **SWEEP_LIMITS)
def refresh_all_rollups_task() -> int:
    from allocations.rollups import rollups_refresh_all

    return rollups_refresh_all()


@shared_task(name="allocations.close_ended", acks_late=True, **SWEEP_LIMITS)
def close_ended_task() -> dict:
    from allocations.alerts import close_ended

    return close_ended()


@shared_task(name="allocations.send_alerts", acks_late=True, **SWEEP_LIMITS)
def send_alerts_task() -> dict:
    from allocations.alerts import alerts_send

    return alerts_send()


@shared_task(name="allocations.ping", acks_late=True, soft_time_limit=10, time_limit=20)
def ping_task(token: str) -> dict:
    """Answers where it ran: how CI proves a real worker, not the caller, ran a task."""
    return {"token": token, "host": socket.gethostname(), "pid": os.getpid()}


@task_failure.connect
def record_task_failure(sender=None, task_id=None, exception=None, **kwargs) -> None:
    from allocations.models import TaskFailure

    name = getattr(sender, "name", None) or str(sender or "unknown")
    try:
        # A savepoint: when the task ran inline inside a transaction, a failed insert
        # must not break the caller's transaction as well.
        with transaction.atomic():
            TaskFailure.objects.create(
                task=name[:200], task_id=str(task_id or "")[:255], error=repr(exception)[:2000]
            )
    except Exception:
        # The database may be what failed; the worker's log still has the error.
        logger.exception("could not record the failure of %s", name)
