"""Audit hooks that fire however the change is made (admin forms, the shell, services).

Role changes are caught here rather than in services because the Django admin edits
a user's flags and a cluster's admins directly: a signal sees every path."""

from axes.signals import user_locked_out
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import m2m_changed, post_save, pre_save
from django.dispatch import receiver

from accounts.models import AuditEvent, User
from accounts.services import audit_record

Action = AuditEvent.Action
# Flags on the user row that are roles: site admin, admin-site access.
ROLE_FLAGS = {"is_superuser": "superuser", "is_staff": "staff"}
_WATCHED = {*ROLE_FLAGS, "is_active"}


@receiver(user_logged_in)
def _signed_in(sender, request, user, **kwargs):
    audit_record(
        action=Action.SIGN_IN,
        actor=user,
        target=user,
        request=request,
        details={"backend": getattr(user, "backend", "")},
    )


@receiver(user_login_failed)
def _sign_in_failed(sender, credentials, request=None, **kwargs):
    # Django has already masked the password in `credentials`; only the name is kept.
    tried = str(credentials.get("username") or credentials.get("email") or "")
    audit_record(action=Action.SIGN_IN_FAILED, actor_label=tried, request=request)


@receiver(user_logged_out)
def _signed_out(sender, request, user, **kwargs):
    if user is not None:
        audit_record(action=Action.SIGN_OUT, actor=user, target=user, request=request)


@receiver(user_locked_out)
def _locked_out(sender, request, username, ip_address, **kwargs):
    audit_record(
        action=Action.LOCKED_OUT,
        actor_label=str(username or ""),
        request=request,
        details={"ip_address": ip_address},
    )


@receiver(pre_save, sender=User)
def _remember_roles(sender, instance, update_fields=None, **kwargs):
    if instance.pk is None or (update_fields is not None and not _WATCHED & set(update_fields)):
        instance._audit_before = None  # a new user, or a save that touches no role
        return
    instance._audit_before = User.objects.filter(pk=instance.pk).values(*sorted(_WATCHED)).first()


@receiver(post_save, sender=User)
def _record_roles(sender, instance, created, **kwargs):
    before = getattr(instance, "_audit_before", None)
    if created:
        before = {"is_superuser": False, "is_staff": False, "is_active": True}
    if before is None:
        return
    for flag, role in ROLE_FLAGS.items():
        now = getattr(instance, flag)
        if now != before[flag]:
            action = Action.ROLE_GRANTED if now else Action.ROLE_REVOKED
            audit_record(action=action, target=instance, details={"role": role})
    if instance.is_active != before["is_active"]:
        status = "active" if instance.is_active else "inactive"
        audit_record(action=Action.STATUS_CHANGED, target=instance, details={"status": status})


def _m2m_roles(role: str, scope_label: str):
    """Records grants and removals of a many-to-many role (a cluster's admins, a
    project's managers), from either side of the relation."""

    def handler(sender, instance, action, reverse, model, pk_set, **kwargs):
        if action == "pre_clear":
            # clear() names no rows; remember which go before they are gone.
            mine, theirs = _through_columns(sender, type(instance), model)
            rows = sender.objects.filter(**{mine: instance.pk})
            instance._audit_cleared = list(rows.values_list(theirs, flat=True))
            return
        if action not in {"post_add", "post_remove", "post_clear"}:
            return
        pks = instance.__dict__.pop("_audit_cleared", []) if action == "post_clear" else pk_set
        verb = Action.ROLE_GRANTED if action == "post_add" else Action.ROLE_REVOKED
        for other in model.objects.filter(pk__in=pks or []):
            user, scope = (other, instance) if not reverse else (instance, other)
            audit_record(
                action=verb,
                target=user,
                details={"role": role, scope_label: str(scope), f"{scope_label}_code": scope.code},
            )

    return handler


def _through_columns(through, instance_model, other_model) -> tuple[str, str]:
    fields = through._meta.fields
    mine = next(f.attname for f in fields if f.related_model is instance_model)
    theirs = next(f.attname for f in fields if f.related_model is other_model)
    return mine, theirs


def connect() -> None:
    from allocations.models import Cluster, Project

    m2m_changed.connect(
        _m2m_roles("cluster_admin", "cluster"),
        sender=Cluster.admins.through,
        weak=False,
        dispatch_uid="audit-cluster-admins",
    )
    m2m_changed.connect(
        _m2m_roles("project_manager", "project"),
        sender=Project.managers.through,
        weak=False,
        dispatch_uid="audit-project-managers",
    )
