"""Celery tasks: thin, id-based, idempotent (so acks_late redelivery is safe).

Time limits: the global CELERY_TASK_SOFT_TIME_LIMIT / CELERY_TASK_TIME_LIMIT apply to
every task; the periodic sweeps below name their own, sized to the work they do.
"""

import logging
import os
import socket

from celery import shared_task
from celery.signals import task_failure
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
