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
