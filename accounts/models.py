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
