"""The request an audit record belongs to, if any (management commands and tasks
have none)."""

import contextlib
import ipaddress
from contextvars import ContextVar

from django.conf import settings

_current_request: ContextVar = ContextVar("audit_request", default=None)


@contextlib.contextmanager
def bind_request(request):
    token = _current_request.set(request)
    try:
        yield
    finally:
        _current_request.reset(token)


def current_request():
    return _current_request.get()


def client_ip(request) -> str | None:
    if request is None:
        return None
    value = request.META.get(settings.CLIENT_IP_HEADER) or ""
    # X-Forwarded-For style headers list the client first.
    value = value.split(",")[0].strip()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None  # absent, or junk in a header: no address rather than a failed write
