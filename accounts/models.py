"""People and institutions.

Users are identified publicly by `code` (a UUID); usernames are what schedulers know
(the Slurm user name) and what importers post.
"""

import uuid

from django.contrib.auth.models import AbstractUser, UserManager
from django.db import models
from django.db.models.functions import Lower


class Organization(models.Model):
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    # Identifier of the institution in the system it came from (e.g. an ACCESS or
    # CILogon organisation id); blank for local organisations.
    originated_id = models.CharField(max_length=100, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(Lower("name"), name="accounts_organization_unique_name"),
            models.UniqueConstraint(
                fields=["originated_id"],
                condition=~models.Q(originated_id=""),
                name="accounts_organization_unique_originated_id",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class User(AbstractUser):
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    email = models.EmailField("email address")
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, null=True, blank=True, related_name="users"
    )
    originated_id = models.CharField(max_length=100, blank=True)
    # The OpenID Connect subject (issuer-unique, never reassigned): how a returning
    # institutional sign-in finds its account, whatever its e-mail has become since.
    oidc_sub = models.CharField("OIDC subject", max_length=255, blank=True, editable=False)

    objects = UserManager()

    class Meta:
        ordering = ["username"]
        constraints = [
            # E-mail identifies a person for sign-in and notifications; case-insensitive
            # so Alice@Uni.edu and alice@uni.edu cannot be two accounts.
            models.UniqueConstraint(
                Lower("email"),
                condition=~models.Q(email=""),
                name="accounts_user_unique_email",
                violation_error_message="A user with this e-mail address already exists.",
            ),
            models.UniqueConstraint(
                fields=["oidc_sub"],
                condition=~models.Q(oidc_sub=""),
                name="accounts_user_unique_oidc_sub",
            ),
        ]

    def __str__(self) -> str:
        full = self.get_full_name()
        return f"{full} ({self.username})" if full else self.username


class ApiToken(models.Model):
    """A cluster's importer credential: posts usage, holds and admission checks for
    its own cluster only. The token itself is shown once; only its SHA-256 is kept
    (tokens are 256-bit random, so a slow password hash would add nothing)."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    cluster = models.ForeignKey(
        "allocations.Cluster", on_delete=models.PROTECT, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, help_text="Where it is used, e.g. 'sacct importer'.")
    # The public part of the token, used to find it and to tell tokens apart in lists.
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    hashed = models.CharField(max_length=64, editable=False)
    created_by = models.ForeignKey(
        User, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_by = models.ForeignKey(
        User, on_delete=models.PROTECT, null=True, blank=True, related_name="+", editable=False
    )

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class AuditEventQuerySet(models.QuerySet):
    """Append-only: rows are created by audit_record and never changed or removed."""

    def update(self, **kwargs):
        raise TypeError("Audit events are append-only; they cannot be updated.")

    def delete(self):
        raise TypeError("Audit events are append-only; they cannot be deleted.")


class AuditAction(models.TextChoices):
    SIGN_IN = "SIGN_IN", "signed in"
    SIGN_IN_FAILED = "SIGN_IN_FAILED", "failed to sign in"
    SIGN_OUT = "SIGN_OUT", "signed out"
    LOCKED_OUT = "LOCKED_OUT", "was locked out"
    TOKEN_ISSUED = "TOKEN_ISSUED", "issued a token"
    TOKEN_REVOKED = "TOKEN_REVOKED", "revoked a token"
    ROLE_GRANTED = "ROLE_GRANTED", "granted a role"
    ROLE_REVOKED = "ROLE_REVOKED", "revoked a role"
    STATUS_CHANGED = "STATUS_CHANGED", "changed a status"
    REQUEST_APPROVED = "REQUEST_APPROVED", "approved a request"
    REQUEST_REJECTED = "REQUEST_REJECTED", "rejected a request"


class AuditEvent(models.Model):
    """One security-relevant act: who, what, on which object, when and from where.

    Written only by accounts.services.audit_record; on PostgreSQL a trigger also refuses
    UPDATE and DELETE (migration 0003), so not even raw SQL rewrites the history."""

    Action = AuditAction

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    when = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        User, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    # Who acted as written at the time: a username, an importer token, or the name a
    # failed sign-in tried (which may belong to nobody).
    actor_label = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=20, choices=Action.choices)
    target_type = models.CharField(max_length=50, blank=True)
    target_code = models.UUIDField(null=True, blank=True, db_index=True)
    target_label = models.CharField(max_length=200, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-when", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(action__in=AuditAction.values),
                name="accounts_auditevent_valid_action",
            ),
            # A target is named by its type and public id together, or not at all.
            models.CheckConstraint(
                condition=models.Q(target_code__isnull=True) | ~models.Q(target_type=""),
                name="accounts_auditevent_target_has_type",
            ),
        ]

    def __str__(self) -> str:
        who = self.actor_label or "someone"
        what = self.get_action_display()
        target = f" {self.target_type} {self.target_label}".rstrip() if self.target_type else ""
        return f"{who} {what}{target}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise TypeError("Audit events are append-only; they cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("Audit events are append-only; they cannot be deleted.")
