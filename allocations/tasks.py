"""Celery tasks: thin, id-based, idempotent (so acks_late redelivery is safe)."""

from celery import shared_task


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


# At most once, unlike the tasks above: a redelivered message would e-mail people twice,
# and a lost notification is the lesser harm (the portal shows every step anyway).
@shared_task(name="allocations.send_request_emails", acks_late=False)
def send_request_emails_task(event_id: int) -> int:
    from allocations.notifications import send_request_emails

    return send_request_emails(event_id=event_id)
