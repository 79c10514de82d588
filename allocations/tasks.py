"""Celery tasks: thin, id-based, idempotent (so acks_late redelivery is safe)."""

from celery import shared_task
from django.conf import settings


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


# At most once, unlike the tasks above: a redelivered message would e-mail people twice,
# and a lost notification is the lesser harm (the portal shows every step anyway).
@shared_task(name="allocations.send_request_emails", acks_late=False)
def send_request_emails_task(event_id: int) -> int:
    from allocations.notifications import send_request_emails

    return send_request_emails(event_id=event_id)
