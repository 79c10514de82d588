"""E-mail at each step of a change request, rendered from templates/email/ and sent only
after the transaction that wrote the step commits (a rolled-back decision e-mails nobody).

Who hears what:
- submitted (CREATED): the cluster's admins, with a link to the request in the review queue;
- approved or rejected: the requester and the PI, with a link to the allocation;
- commented: the requester and the PI; a comment from the project's side also reaches
  the cluster's admins (it usually answers their question); the author is left out;
- cancelled: the cluster's admins (the request leaves their queue).
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse

from accounts.models import User
from allocations.models import ChangeRequest, ChangeRequestEvent

logger = logging.getLogger(__name__)

Kind = ChangeRequestEvent.Kind

_muted: ContextVar[bool] = ContextVar("notifications_muted", default=False)


@contextmanager
def muted() -> Iterator[None]:
    """No e-mail for the steps written inside: load_demo makes up a history nobody is to
    be told about."""
    token = _muted.set(True)
    try:
        yield
    finally:
        _muted.reset(token)


def request_event_announce(event: ChangeRequestEvent) -> None:
    """Queues the e-mails for this step, to go out once the current transaction commits.

    robust: the step is already committed when this runs, so a mail server that is down
    must not turn a recorded decision into an error page; the failure is logged."""
    from allocations.tasks import send_request_emails_task

    if _muted.get():
        return
    event_id = event.pk
    transaction.on_commit(lambda: send_request_emails_task.delay(event_id), robust=True)


def absolute_url(path: str) -> str:
    return f"{settings.SITE_URL}{path}"


def review_url(request: ChangeRequest) -> str:
    return absolute_url(reverse("allocations:review:request", args=[request.code]))


def allocation_url(request: ChangeRequest) -> str:
    return absolute_url(reverse("allocations:allocation", args=[request.allocation.code]))


@dataclass(frozen=True)
class Audience:
    users: list[User]
    template: str
    link: str


def _reachable(users, *, leave_out: User | None = None) -> list[User]:
    seen: set[int] = set()
    out = []
    for user in users:
        if user.pk in seen or not user.is_active or not user.email:
            continue
        if leave_out is not None and user.pk == leave_out.pk:
            continue
        seen.add(user.pk)
        out.append(user)
    return out


def audiences(event: ChangeRequestEvent) -> list[Audience]:
    request = event.request
    allocation = request.allocation
    admins = list(allocation.cluster.admins.all())
    project_side = [request.requester, allocation.project.pi]
    if event.kind == Kind.CREATED:
        return [Audience(_reachable(admins), "request_submitted", review_url(request))]
    if event.kind in (Kind.APPROVED, Kind.REJECTED):
        return [Audience(_reachable(project_side), "request_decided", allocation_url(request))]
    if event.kind == Kind.CANCELLED:
        return [Audience(_reachable(admins, leave_out=event.actor), "request_cancelled", "")]
    # COMMENTED
    out = [
        Audience(
            _reachable(project_side, leave_out=event.actor),
            "request_commented",
            allocation_url(request),
        )
    ]
    if event.actor_id not in {admin.pk for admin in admins}:
        to_admins = [u for u in _reachable(admins, leave_out=event.actor) if u not in project_side]
        out.append(Audience(to_admins, "request_commented", review_url(request)))
    return out


def send_request_emails(*, event_id: int) -> int:
    """Renders and sends the e-mails for one request event; returns how many were sent."""
    event = (
        ChangeRequestEvent.objects.select_related(
            "actor",
            "request__requester",
            "request__decided_by",
            "request__allocation__cluster",
            "request__allocation__project__pi",
        )
        .filter(pk=event_id)
        .first()
    )
    if event is None:
        return 0
    messages = []
    for audience in audiences(event):
        for user in audience.users:
            context = {
                "event": event,
                "request": event.request,
                "allocation": event.request.allocation,
                "recipient": user,
                "link": audience.link,
                "site_url": settings.SITE_URL,
            }
            subject = render_to_string(f"email/{audience.template}_subject.txt", context)
            body = render_to_string(f"email/{audience.template}.txt", context)
            messages.append(
                EmailMessage(
                    subject=" ".join(subject.split()),
                    body=body,
                    from_email=settings.DEFAULT_FROM_EMAIL,
                    to=[user.email],
                )
            )
    if not messages:
        return 0
    sent = get_connection().send_messages(messages) or 0
    logger.info("request %s: %s e-mails for %s", event.request.code, sent, event.kind)
    return sent
