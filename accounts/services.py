import re

from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.db import IntegrityError, transaction
from django.db.models import Q

from accounts.audit_context import client_ip, current_request
from accounts.models import AuditEvent, Organization, User


@transaction.atomic
def organization_create(*, name: str, originated_id: str = "") -> Organization:
    organization = Organization(name=name.strip(), originated_id=originated_id.strip())
    organization.full_clean()
    organization.save()
    return organization


@transaction.atomic
def user_create(
    *,
    username: str,
    email: str,
    password: str | None = None,
    first_name: str = "",
    last_name: str = "",
    organization: Organization | None = None,
    originated_id: str = "",
    is_staff: bool = False,
    is_superuser: bool = False,
) -> User:
    """Creates a local account. Without a password the account cannot sign in with
    one (it is for people who sign in through the institution, or are only charged)."""
    user = User(
        username=username.strip(),
        email=User.objects.normalize_email(email.strip()),
        first_name=first_name.strip(),
        last_name=last_name.strip(),
        organization=organization,
        originated_id=originated_id.strip(),
        is_staff=is_staff,
        is_superuser=is_superuser,
    )
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean()
    user.save()
    return user


# --- institutional sign-in ----------------------------------------------------------

_USERNAME_JUNK = re.compile(r"[^\w.@+-]")


def organization_for_claims(*, name: str, originated_id: str) -> Organization | None:
    """The organisation an identity provider names, created on first sight. The
    provider's id (CILogon's idp entity id) wins over the display name."""
    name = (name or "").strip()[:200]
    originated_id = (originated_id or "").strip()[:100]
    if originated_id:
        found = Organization.objects.filter(originated_id=originated_id).first()
        if found is not None:
            return found
    if name:
        found = Organization.objects.filter(name__iexact=name).first()
        if found is not None:
            if originated_id and not found.originated_id:
                found.originated_id = originated_id
                found.save(update_fields=["originated_id"])
            return found
    if not (name or originated_id):
        return None
    try:
        with transaction.atomic():
            return organization_create(name=name or originated_id, originated_id=originated_id)
    except IntegrityError:
        # Another first sign-in from the same institution created it just now.
        return Organization.objects.filter(
            Q(originated_id=originated_id) if originated_id else Q(name__iexact=name)
        ).first()


def _free_username(wanted: str, *, exclude_pk=None) -> str:
    base = _USERNAME_JUNK.sub("", wanted)[:140] or "user"
    candidate, n = base, 1
    while User.objects.filter(username=candidate).exclude(pk=exclude_pk).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


@transaction.atomic
def oidc_user_sync(*, claims: dict, user: User | None = None) -> User:
    """Creates (user=None) or refreshes the account an OpenID Connect sign-in belongs
    to, from the provider's claims: sub, email, names, preferred username and the
    organisation claims named by settings.OIDC_ORGANIZATION_CLAIM / _ID_CLAIM."""
    email = User.objects.normalize_email(str(claims.get("email", "")).strip())
    organization = organization_for_claims(
        name=str(claims.get(settings.OIDC_ORGANIZATION_CLAIM) or ""),
        originated_id=str(claims.get(settings.OIDC_ORGANIZATION_ID_CLAIM) or ""),
    )
    taken = User.objects.filter(email__iexact=email).exclude(pk=getattr(user, "pk", None))
    if user is None:
        if taken.exists():
            # Only an unlinked account with a verified address may be claimed (see
            # PortalOIDCBackend.filter_users_by_claims); a second account may not share it.
            raise SuspiciousOperation(
                f"{email} belongs to an existing account; a site admin must link it."
            )
        wanted = str(claims.get(settings.OIDC_USERNAME_CLAIM) or email.split("@")[0])
        user = User(username=_free_username(wanted))
        user.set_unusable_password()
    user.oidc_sub = str(claims["sub"])[:255]
    if email and not taken.exists():
        user.email = email
    user.first_name = str(claims.get("given_name") or user.first_name)[:150]
    user.last_name = str(claims.get("family_name") or user.last_name)[:150]
    if organization is not None:
        user.organization = organization
    user.full_clean()
    user.save()
    return user


# --- the audit log -------------------------------------------------------------------


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # Decimal, UUID, dates: exact as text


def audit_record(
    *,
    action: str,
    actor: User | None = None,
    actor_label: str = "",
    target=None,
    details: dict | None = None,
    request=None,
) -> AuditEvent:
    """Appends one event to the audit log.

    `target` is any model instance with a public `code`. Without an explicit actor the
    current request's user is taken (an importer token shows as its label); the
    address is the current request's (see CLIENT_IP_HEADER). Written in the caller's
    transaction, so an act that rolls back leaves no record of having happened."""
    request = request if request is not None else current_request()
    if actor is None and request is not None:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            if isinstance(user, User):
                actor = user
            else:
                actor_label = actor_label or str(user)
    if actor is not None and not actor_label:
        actor_label = actor.get_username()
    event = AuditEvent(
        action=action,
        actor=actor,
        actor_label=actor_label[:200],
        ip=client_ip(request),
        details=_jsonable(details or {}),
    )
    if target is not None:
        event.target_type = target._meta.label_lower
        event.target_code = getattr(target, "code", None)
        event.target_label = str(target)[:200]
    event.save()
    return event


def audit_status(*, actor: User | None, target, status: str, reason: str = "") -> None:
    """A status change of a project, allocation or membership; no-op when the change
    leaves the status alone (status is empty)."""
    if status:
        audit_record(
            action=AuditEvent.Action.STATUS_CHANGED,
            actor=actor,
            target=target,
            details={"status": status, "reason": reason},
        )


def audit_decision(*, actor: User, request) -> None:
    """An approval or rejection of a change request, as just decided."""
    approved = request.state == "APPROVED"
    audit_record(
        action=AuditEvent.Action.REQUEST_APPROVED
        if approved
        else AuditEvent.Action.REQUEST_REJECTED,
        actor=actor,
        target=request,
        details={
            "allocation": request.allocation.code,
            "su_requested": request.su_delta,
            "su_approved": request.su_approved,
            "requested_status": request.requested_status,
            "reason": request.decision_reason,
        },
    )
