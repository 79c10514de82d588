"""Issuing, revoking and checking importer API tokens.

A token reads `sup_<prefix>_<secret>`: the prefix finds the row, the secret is
compared by hash in constant time.
"""

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiToken, AuditEvent, User
from accounts.services import audit_record

TOKEN_PREFIX = "sup_"  # noqa: S105 (a marker, not a secret)
# Recording every use would turn each read into a write; a minute is precise enough.
LAST_USED_PRECISION = dt.timedelta(seconds=60)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    secret: str  # the whole token string: shown once, never stored


@transaction.atomic
def api_token_issue(*, actor: User, cluster, name: str) -> IssuedToken:
    from allocations.selectors import user_administers_cluster

    if not user_administers_cluster(user=actor, cluster=cluster):
        raise PermissionDenied(f"Only admins of {cluster.name} may issue its tokens.")
    prefix = secrets.token_hex(4)
    secret = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    token = ApiToken(
        cluster=cluster,
        name=name.strip() or "importer",
        prefix=prefix,
        hashed=_digest(secret),
        created_by=actor,
    )
    token.full_clean()
    token.save()
    audit_record(
        action=AuditEvent.Action.TOKEN_ISSUED,
        actor=actor,
        target=token,
        details={"cluster": cluster.name, "prefix": prefix, "name": token.name},
    )
    return IssuedToken(token=token, secret=secret)


@transaction.atomic
def api_token_revoke(*, actor: User, token: ApiToken) -> ApiToken:
    from allocations.selectors import user_administers_cluster

    if not user_administers_cluster(user=actor, cluster=token.cluster):
        raise PermissionDenied(f"Only admins of {token.cluster.name} may revoke its tokens.")
    revoked = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoked_by=actor
    )
    token.refresh_from_db()
    if revoked:
        audit_record(
            action=AuditEvent.Action.TOKEN_REVOKED,
            actor=actor,
            target=token,
            details={"cluster": token.cluster.name, "prefix": token.prefix},
        )
    return token


def api_token_check(secret: str) -> ApiToken | None:
    """The active token this secret belongs to, or None."""
    if not secret.startswith(TOKEN_PREFIX):
        return None
    prefix = secret[len(TOKEN_PREFIX) :].split("_", 1)[0]
    token = (
        ApiToken.objects.select_related("cluster")
        .filter(prefix=prefix, revoked_at__isnull=True)
        .first()
    )
    if token is None or not hmac.compare_digest(token.hashed, _digest(secret)):
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_PRECISION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
