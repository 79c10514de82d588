"""The allocation domain (README.md states the rules in prose).

Money model, in one paragraph: an Allocation is an SU budget. Its budget is never
edited in place: every change to budget, status or dates is an AllocationChange row
(the "diff"), and Allocation.su_budget is the running total of those diffs' deltas.
Usage rows are charges against the budget; Allocation.su_used and Membership.su_used
are running totals of them, maintained in the same transaction as the rows they sum
(services.py), and verified by the verify_ledger command. SU amounts are NUMERIC with
SU_PLACES decimal places; see conversion.py for the one rounding rule.

Nothing here is ever deleted: statuses go to DELETED and history stays.
"""

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Lower

from allocations.conversion import RATE_DIGITS, RATE_PLACES, SU_DIGITS, SU_PLACES

RAW_DIGITS, RAW_PLACES = 24, 3


def su_field(verbose_name=None, **kwargs) -> models.DecimalField:
    return models.DecimalField(
        verbose_name, max_digits=SU_DIGITS, decimal_places=SU_PLACES, **kwargs
    )


class Status(models.TextChoices):
    ACTIVE = "ACTIVE", "Active"
    INACTIVE = "INACTIVE", "Inactive"
    DELETED = "DELETED", "Deleted"


def _status_check(model: str) -> models.CheckConstraint:
    return models.CheckConstraint(
        condition=Q(status__in=Status.values), name=f"allocations_{model}_valid_status"
    )


class Origination(models.TextChoices):
    LOCAL = "LOCAL", "Local"
    ACCESS = "ACCESS", "ACCESS"
    NAIRR = "NAIRR", "NAIRR Pilot"
    XRAS = "XRAS", "XRAS"
    OTHER = "OTHER", "Other"


class Project(models.Model):
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    pi = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="pi_projects"
    )
    # Co-PIs: the PI's rights on the project, but not its ownership.
    managers = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="managed_projects"
    )
    origination = models.CharField(
        max_length=16, choices=Origination.choices, default=Origination.LOCAL
    )
    originated_id = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["title"]
        constraints = [
            _status_check("project"),
            models.UniqueConstraint(
                fields=["origination", "originated_id"],
                condition=~Q(originated_id=""),
                name="allocations_project_unique_originated_id",
                violation_error_message="A project with this origination and id already exists.",
            ),
        ]

    def __str__(self) -> str:
        return self.title


class ProjectChange(models.Model):
    """Append-only record of a change to a project's status or managers."""

    class Kind(models.TextChoices):
        CREATED = "CREATED", "Created"
        STATUS = "STATUS", "Status changed"
        MANAGER_ADDED = "MANAGER_ADDED", "Manager added"
        MANAGER_REMOVED = "MANAGER_REMOVED", "Manager removed"

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="changes")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, blank=True)
    subject = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    reason = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=["CREATED", "STATUS", "MANAGER_ADDED", "MANAGER_REMOVED"]),
                name="allocations_projectchange_valid_kind",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on {self.created:%Y-%m-%d}"


class Cluster(models.Model):
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # The short name schedulers and importers use (Slurm ClusterName).
    name = models.SlugField(max_length=64, unique=True)
    title = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    admins = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="administered_clusters"
    )
    # What the provider can give out in a month; committed budgets are compared to it.
    su_capacity_per_month = su_field(null=True, blank=True)
    # How SUs become Slurm limits (allocations/slurm.py): what one unit of Slurm's
    # `billing` TRES costs for an hour, so that TRESBillingWeights can stay integers.
    su_per_billing_unit_hour = models.DecimalField(
        "SU per billing unit-hour",
        max_digits=RATE_DIGITS,
        decimal_places=RATE_PLACES,
        default=1,
        help_text="SUs charged for one unit of Slurm's billing TRES for one hour.",
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(su_capacity_per_month__isnull=True) | Q(su_capacity_per_month__gt=0),
                name="allocations_cluster_capacity_positive",
            ),
            models.CheckConstraint(
                condition=Q(su_per_billing_unit_hour__gt=0),
                name="allocations_cluster_billing_rate_positive",
                violation_error_message="The billing rate must be positive.",
            ),
        ]

    def __str__(self) -> str:
        return self.title or self.name


class Resource(models.Model):
    class Kind(models.TextChoices):
        CPU = "CPU", "CPU"
        GPU = "GPU", "GPU"
        MEMORY = "MEMORY", "Memory"
        STORAGE = "STORAGE", "Storage"
        OTHER = "OTHER", "Other"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="resources")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # What one unit is ("core", "GPU", "GB"): usage is counted in unit-hours of it.
    unit = models.CharField(max_length=32)
    # How many units the cluster has (e.g. 64 H200 GPUs); informative.
    amount = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["cluster__name", "name"]
        constraints = [
            models.UniqueConstraint(
                "cluster",
                Lower("name"),
                name="allocations_resource_unique_name",
                violation_error_message="This cluster already has a resource with this name.",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["CPU", "GPU", "MEMORY", "STORAGE", "OTHER"]),
                name="allocations_resource_valid_kind",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.cluster.name})"


class Rate(models.Model):
    """SUs charged per unit-hour of one resource, in force for [start, end).

    Windows of one resource never overlap: on PostgreSQL an exclusion constraint
    (migration 0002) holds it; services.rate_add checks the same rule everywhere.
    """

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    resource = models.ForeignKey(Resource, on_delete=models.PROTECT, related_name="rates")
    su_per_unit_hour = models.DecimalField(
        "SU per unit-hour", max_digits=RATE_DIGITS, decimal_places=RATE_PLACES
    )
    start = models.DateTimeField()
    end = models.DateTimeField(null=True, blank=True, help_text="Exclusive; empty = open.")
    reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["resource", "start"]
        indexes = [
            # services.rates_in_force: the windows of a resource around a usage time.
            models.Index(fields=["resource", "start"], name="alloc_rate_lookup"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(su_per_unit_hour__gte=0), name="allocations_rate_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(end__isnull=True) | Q(end__gt=F("start")),
                name="allocations_rate_end_after_start",
                violation_error_message="A rate window must end after it starts.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.resource}: {self.su_per_unit_hour} SU/{self.resource.unit}-hour"


class Allocation(models.Model):
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="allocations")
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="allocations")
    # The Slurm account name: what importers and admission checks send.
    name = models.SlugField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.INACTIVE)
    # Inclusive dates, UTC: usable from start 00:00 to end 23:59:59.
    start = models.DateField()
    end = models.DateField()
    resources = models.ManyToManyField(Resource, related_name="allocations")
    # Maintained totals (services.py keeps them in step with their records):
    # su_budget = sum(AllocationChange.su_delta); su_used = sum of usage charges and
    # their adjustments; su_held = sum(Hold.su_amount) of open holds.
    su_budget = su_field(default=0)
    su_used = su_field(default=0)
    su_held = su_field(default=0)
    # Percentages of the budget at which the PI is warned, e.g. "50,80,100"; empty: the
    # site's ALERT_THRESHOLDS. Set through alerts.allocation_set_alert_thresholds.
    alert_thresholds = models.CharField(max_length=100, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["cluster__name", "name"]
        indexes = [
            # Admin queue and cluster commitment: a cluster's allocations by status.
            models.Index(fields=["cluster", "status", "end"], name="alloc_cluster_status"),
        ]
        constraints = [
            _status_check("allocation"),
            models.UniqueConstraint(
                fields=["cluster", "name"],
                name="allocations_allocation_unique_account",
                violation_error_message="This cluster already has an allocation with this name.",
            ),
            models.CheckConstraint(
                condition=Q(su_budget__gte=0),
                name="allocations_allocation_budget_not_negative",
                violation_error_message="The SU budget cannot be negative.",
            ),
            models.CheckConstraint(
                condition=Q(su_used__gte=0), name="allocations_allocation_used_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(su_held__gte=0), name="allocations_allocation_held_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(end__gte=F("start")),
                name="allocations_allocation_end_after_start",
                violation_error_message="The end date cannot be before the start date.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} on {self.cluster.name}"

    @property
    def su_remaining(self):
        return self.su_budget - self.su_used - self.su_held

    @property
    def is_overdrawn(self) -> bool:
        # Holds are granted only within the balance, so only usage can overdraw.
        return self.su_used > self.su_budget


class ChangeRequest(models.Model):
    class Kind(models.TextChoices):
        NEW_ALLOCATION = "NEW", "New allocation"
        CHANGE = "CHANGE", "Change"

    class State(models.TextChoices):
        PENDING = "PENDING", "Pending"
        APPROVED = "APPROVED", "Approved"
        REJECTED = "REJECTED", "Rejected"
        CANCELLED = "CANCELLED", "Cancelled"

    class Priority(models.IntegerChoices):
        LOW = 1, "Low"
        NORMAL = 2, "Normal"
        HIGH = 3, "High"
        URGENT = 4, "Urgent"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    allocation = models.ForeignKey(
        Allocation, on_delete=models.PROTECT, related_name="change_requests"
    )
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.CHANGE)
    # SUs to add (negative: to give back). Empty: the request does not touch the budget.
    su_delta = su_field("SU change", null=True, blank=True)
    requested_status = models.CharField(max_length=16, choices=Status.choices, blank=True)
    requested_end = models.DateField(null=True, blank=True)
    justification = models.TextField()
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    requester = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="change_requests"
    )
    created = models.DateTimeField(auto_now_add=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="decided_requests",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True)
    # What was granted, when it differs from su_delta the approver says why.
    su_approved = su_field(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        indexes = [
            # Admin queue: pending requests, highest priority first, then oldest.
            models.Index(
                F("priority").desc(),
                "created",
                condition=Q(state="PENDING"),
                name="alloc_cr_pending_queue",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=["PENDING", "APPROVED", "REJECTED", "CANCELLED"]),
                name="allocations_changerequest_valid_state",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["NEW", "CHANGE"]), name="allocations_changerequest_valid_kind"
            ),
            models.CheckConstraint(
                condition=Q(requested_status="") | Q(requested_status__in=Status.values),
                name="allocations_changerequest_valid_requested_status",
            ),
            models.CheckConstraint(
                condition=Q(priority__gte=1, priority__lte=4),
                name="allocations_changerequest_valid_priority",
            ),
            models.CheckConstraint(
                condition=~Q(su_delta=0),
                name="allocations_changerequest_delta_not_zero",
                violation_error_message="A change of 0 SUs changes nothing.",
            ),
            models.CheckConstraint(
                condition=~Q(
                    su_delta__isnull=True, requested_status="", requested_end__isnull=True
                ),
                name="allocations_changerequest_asks_something",
                violation_error_message="Ask for SUs, an end date or a status.",
            ),
            models.CheckConstraint(
                # su_delta IS NOT NULL: a NULL amount would make the check NULL, which
                # the database counts as passing.
                condition=~Q(kind="NEW") | Q(su_delta__isnull=False, su_delta__gt=0),
                name="allocations_changerequest_new_has_budget",
                violation_error_message="A new allocation needs a positive SU amount.",
            ),
            models.CheckConstraint(
                condition=Q(su_approved__isnull=True) | Q(state="APPROVED"),
                name="allocations_changerequest_approved_amount_only_when_approved",
            ),
            # A decision has a decider and a time; a pending request has neither.
            models.CheckConstraint(
                condition=(
                    Q(state="PENDING") & Q(decided_at__isnull=True) & Q(decided_by__isnull=True)
                )
                | (~Q(state="PENDING") & Q(decided_at__isnull=False) & Q(decided_by__isnull=False)),
                name="allocations_changerequest_decided_iff_not_pending",
            ),
            models.UniqueConstraint(
                fields=["allocation"],
                condition=Q(state="PENDING", kind="NEW"),
                name="allocations_changerequest_one_pending_new",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} request for {self.allocation.name} ({self.state})"

    @property
    def is_pending(self) -> bool:
        return self.state == self.State.PENDING


class ChangeRequestEvent(models.Model):
    class Kind(models.TextChoices):
        CREATED = "CREATED", "Created"
        COMMENTED = "COMMENTED", "Commented"
        APPROVED = "APPROVED", "Approved"
        REJECTED = "REJECTED", "Rejected"
        CANCELLED = "CANCELLED", "Cancelled"

    request = models.ForeignKey(ChangeRequest, on_delete=models.PROTECT, related_name="events")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    text = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=["CREATED", "COMMENTED", "APPROVED", "REJECTED", "CANCELLED"]),
                name="allocations_changerequestevent_valid_kind",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on {self.created:%Y-%m-%d}"


class AllocationChange(models.Model):
    """The diff: an append-only record of a change to an allocation's budget, status or dates.

    su_delta is signed; su_budget is the budget after this change, so the latest row
    states the current budget and the sum of deltas must equal it.
    """

    class Kind(models.TextChoices):
        CREATED = "CREATED", "Created"
        REQUEST = "REQUEST", "Request approved"
        ADMIN = "ADMIN", "Set by an admin"
        EXPIRY = "EXPIRY", "Expired"
        IMPORT = "IMPORT", "Imported"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    allocation = models.ForeignKey(Allocation, on_delete=models.PROTECT, related_name="changes")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    su_delta = su_field(default=0)
    su_budget = su_field()
    status = models.CharField(max_length=16, choices=Status.choices, blank=True)
    start = models.DateField(null=True, blank=True)
    end = models.DateField(null=True, blank=True)
    change_request = models.ForeignKey(
        ChangeRequest, on_delete=models.PROTECT, null=True, blank=True, related_name="changes"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    reason = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "id"]
        indexes = [
            # Allocation history page: an allocation's diffs in time order.
            models.Index(fields=["allocation", "created"], name="alloc_change_history"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(su_budget__gte=0),
                name="allocations_allocationchange_budget_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(status="") | Q(status__in=Status.values),
                name="allocations_allocationchange_valid_status",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["CREATED", "REQUEST", "ADMIN", "EXPIRY", "IMPORT"]),
                name="allocations_allocationchange_valid_kind",
            ),
            # One approval writes one diff, even if two admins click at once.
            models.UniqueConstraint(
                fields=["change_request"],
                condition=Q(change_request__isnull=False),
                name="allocations_allocationchange_one_per_request",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on {self.created:%Y-%m-%d}: {self.su_delta:+} SU"


class Membership(models.Model):
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    allocation = models.ForeignKey(Allocation, on_delete=models.PROTECT, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="memberships"
    )
    # Empty: the member may use the whole pool.
    su_cap = su_field("SU cap", null=True, blank=True)
    start = models.DateField()
    end = models.DateField(
        null=True, blank=True, help_text="Inclusive; empty = the allocation's end."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    # Maintained: this user's usage charges (with adjustments) and open holds here.
    su_used = su_field(default=0)
    su_held = su_field(default=0)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["allocation", "user__username"]
        constraints = [
            _status_check("membership"),
            models.UniqueConstraint(
                fields=["allocation", "user"],
                name="allocations_membership_one_per_user",
                violation_error_message="This user is already a member of this allocation.",
            ),
            models.CheckConstraint(
                condition=Q(su_cap__isnull=True) | Q(su_cap__gte=0),
                name="allocations_membership_cap_not_negative",
                violation_error_message="A cap cannot be negative.",
            ),
            models.CheckConstraint(
                condition=Q(su_used__gte=0), name="allocations_membership_used_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(su_held__gte=0), name="allocations_membership_held_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(end__isnull=True) | Q(end__gte=F("start")),
                name="allocations_membership_end_after_start",
                violation_error_message="The end date cannot be before the start date.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user.username} on {self.allocation.name}"


class MembershipChange(models.Model):
    """Append-only record of a change to a membership: added, cap, status."""

    class Kind(models.TextChoices):
        ADDED = "ADDED", "Added"
        CAP = "CAP", "Cap changed"
        STATUS = "STATUS", "Status changed"

    membership = models.ForeignKey(Membership, on_delete=models.PROTECT, related_name="changes")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    su_cap = su_field(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    reason = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=["ADDED", "CAP", "STATUS"]),
                name="allocations_membershipchange_valid_kind",
            ),
            models.CheckConstraint(
                condition=Q(su_cap__isnull=True) | Q(su_cap__gte=0),
                name="allocations_membershipchange_cap_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on {self.created:%Y-%m-%d}"


class Usage(models.Model):
    """One job's consumption of one resource by one user: a fact, charged once.

    raw_unit_seconds is exact (units x seconds, e.g. 4 GPUs x 3600 s = 14400); the SU
    charge is derived from it with the rate in force at charged_at (conversion.py).
    """

    # The biggest table, written 10,000 rows a batch: every index costs each insert. The
    # cluster, allocation and resource columns lead the composite indexes and the usage
    # key below, which serve their lookups, so they carry no index of their own.
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="+", db_index=False)
    allocation = models.ForeignKey(
        Allocation, on_delete=models.PROTECT, related_name="usage", db_index=False
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    job_id = models.CharField(max_length=64)
    resource = models.ForeignKey(
        Resource, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    raw_unit_seconds = models.DecimalField(max_digits=RAW_DIGITS, decimal_places=RAW_PLACES)
    rate = models.ForeignKey(Rate, on_delete=models.PROTECT, related_name="+")
    su_amount = su_field()
    charged_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-charged_at", "-id"]
        indexes = [
            # Allocation jobs list and burn-down: an allocation's usage by time.
            models.Index(fields=["allocation", "charged_at"], name="alloc_usage_alloc_time"),
            # A member's own jobs and per-member usage over time.
            models.Index(
                fields=["allocation", "user", "charged_at"], name="alloc_usage_member_time"
            ),
            # Re-rating after a rate correction: usage of a resource within a window.
            models.Index(fields=["resource", "charged_at"], name="alloc_usage_resource_time"),
        ]
        constraints = [
            # Exactly-once charging: the same job reported again is a duplicate.
            models.UniqueConstraint(
                fields=["cluster", "job_id", "resource", "user"],
                name="allocations_usage_one_per_job_resource_user",
            ),
            models.CheckConstraint(
                condition=Q(su_amount__gte=0), name="allocations_usage_charge_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(raw_unit_seconds__gte=0), name="allocations_usage_raw_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(ended_at__isnull=True)
                | Q(started_at__isnull=True)
                | Q(ended_at__gte=F("started_at")),
                name="allocations_usage_end_after_start",
            ),
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} of {self.user_id} on {self.allocation_id}"


class UsageAdjustment(models.Model):
    """An append-only correction of one usage charge; the original charge stays as it was.

    A usage record's effective charge is su_amount plus the su_delta of its adjustments.
    """

    class Kind(models.TextChoices):
        REFUND = "REFUND", "Refund"
        RERATE = "RERATE", "Re-rated after a rate correction"
        CORRECTION = "CORRECTION", "Usage corrected by the importer"

    usage = models.ForeignKey(Usage, on_delete=models.PROTECT, related_name="adjustments")
    # Denormalised from usage so balances and rollups can sum by allocation and member
    # without joining the usage table.
    allocation = models.ForeignKey(Allocation, on_delete=models.PROTECT, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    su_delta = su_field()
    # The raw amount and rate the charge now stands on (for RERATE and CORRECTION).
    raw_unit_seconds = models.DecimalField(
        max_digits=RAW_DIGITS, decimal_places=RAW_PLACES, null=True, blank=True
    )
    rate = models.ForeignKey(
        Rate, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    reason = models.TextField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "id"]
        indexes = [
            # verify_ledger and balance rebuilds: adjustments of an allocation.
            models.Index(fields=["allocation", "user"], name="alloc_adjust_member"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=["REFUND", "RERATE", "CORRECTION"]),
                name="allocations_usageadjustment_valid_kind",
            ),
            # A job is refunded at most once.
            models.UniqueConstraint(
                fields=["usage"],
                condition=Q(kind="REFUND"),
                name="allocations_usageadjustment_one_refund",
                violation_error_message="This job has already been refunded.",
            ),
            models.CheckConstraint(
                condition=~Q(kind="REFUND") | Q(su_delta__lte=0),
                name="allocations_usageadjustment_refund_not_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of {self.su_delta} SU on usage {self.usage_id}"


class RateCorrection(models.Model):
    """Append-only record of an admin changing a rate window after it was added: its
    value (then the usage charged at it is re-rated) or its end (closing the window).
    The Rate row holds the current values; these rows say who changed what, when, why."""

    rate = models.ForeignKey(Rate, on_delete=models.PROTECT, related_name="corrections")
    old_su_per_unit_hour = models.DecimalField(max_digits=RATE_DIGITS, decimal_places=RATE_PLACES)
    new_su_per_unit_hour = models.DecimalField(max_digits=RATE_DIGITS, decimal_places=RATE_PLACES)
    old_end = models.DateTimeField(null=True, blank=True)
    new_end = models.DateTimeField(null=True, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    reason = models.TextField()
    created = models.DateTimeField(auto_now_add=True)
    # Set by the re-rating task once every affected usage record has its adjustment.
    rerated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(new_su_per_unit_hour__gte=0),
                name="allocations_ratecorrection_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.old_su_per_unit_hour} -> {self.new_su_per_unit_hour} on {self.created:%Y-%m-%d}"
        )


class Hold(models.Model):
    """A lien: SUs reserved for a job between admission and its usage arriving."""

    class State(models.TextChoices):
        OPEN = "OPEN", "Open"
        SETTLED = "SETTLED", "Settled by usage"
        RELEASED = "RELEASED", "Released"
        EXPIRED = "EXPIRED", "Expired"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="+")
    allocation = models.ForeignKey(Allocation, on_delete=models.PROTECT, related_name="holds")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    resource = models.ForeignKey(Resource, on_delete=models.PROTECT, related_name="+")
    job_id = models.CharField(max_length=64)
    su_amount = su_field()
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN)
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        ordering = ["-created"]
        indexes = [
            # The stale-hold sweep: open holds past their expiry.
            models.Index(
                fields=["expires_at"], condition=Q(state="OPEN"), name="alloc_hold_open_expiry"
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=["OPEN", "SETTLED", "RELEASED", "EXPIRED"]),
                name="allocations_hold_valid_state",
            ),
            models.CheckConstraint(
                condition=Q(su_amount__gt=0), name="allocations_hold_amount_positive"
            ),
            # One open hold per job: a scheduler retrying its request gets a clear refusal.
            models.UniqueConstraint(
                fields=["cluster", "job_id"],
                condition=Q(state="OPEN"),
                name="allocations_hold_one_open_per_job",
                violation_error_message="This job already has an open hold.",
            ),
            models.CheckConstraint(
                condition=(Q(state="OPEN") & Q(closed_at__isnull=True))
                | (~Q(state="OPEN") & Q(closed_at__isnull=False)),
                name="allocations_hold_closed_iff_not_open",
            ),
        ]

    def __str__(self) -> str:
        return f"hold of {self.su_amount} SU for job {self.job_id} ({self.state})"


class TresMapping(models.Model):
    """How a cluster's scheduler accounting maps onto portal resources.

    A job's TRES entry `tres` (e.g. "cpu", "gres/gpu:h200", "mem"), on `partition` (blank:
    any partition), is usage of `resource`, `scale` units per TRES unit (e.g. 1/1024 to
    count memory in GB from megabytes). A partition-specific mapping wins over a blank
    one for the same TRES.
    """

    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="tres_mappings")
    partition = models.CharField(max_length=64, blank=True)
    tres = models.CharField("TRES", max_length=64)
    resource = models.ForeignKey(Resource, on_delete=models.PROTECT, related_name="+")
    scale = models.DecimalField(max_digits=20, decimal_places=10, default=1)

    class Meta:
        ordering = ["cluster", "partition", "tres"]
        constraints = [
            models.UniqueConstraint(
                fields=["cluster", "partition", "tres"],
                name="allocations_tresmapping_unique",
                violation_error_message="This cluster already maps this TRES on this partition.",
            ),
            models.CheckConstraint(
                condition=Q(scale__gt=0), name="allocations_tresmapping_scale_positive"
            ),
        ]

    def __str__(self) -> str:
        where = f" on {self.partition}" if self.partition else ""
        return f"{self.tres}{where} -> {self.resource.name}"

    def clean(self) -> None:
        if self.resource_id and self.cluster_id and self.resource.cluster_id != self.cluster_id:
            raise ValidationError({"resource": "Choose a resource of this cluster."})


def _import_path(instance: "UsageImport", filename: str) -> str:
    # The uploader's file name stays in original_name; on disk only the import's code, so
    # no name a client chose ever becomes a path.
    return f"imports/{instance.code}"


class UsageImport(models.Model):
    """An uploaded scheduler accounting file, charged in the background (imports.py).

    `checkpoint` counts the parser items whose effects (charges, rejects, counters) are
    committed; each batch moves it in the same transaction as its charge, so a run that
    dies anywhere is resumed after the last committed batch and nothing is counted twice.
    `runner` identifies the process holding the import while it is RUNNING; it proves it
    is alive by `heartbeat_at`.
    """

    class Format(models.TextChoices):
        SACCT = "sacct", "sacct --parsable2"
        SLURMRESTD = "slurmrestd", "slurmrestd jobs JSON"
        SWF = "swf", "Standard Workload Format"

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="usage_imports")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    token = models.ForeignKey(
        "accounts.ApiToken", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    format = models.CharField(max_length=16, choices=Format.choices)
    tz = models.CharField("time zone", max_length=64, blank=True)
    file = models.FileField(upload_to=_import_path, max_length=200)
    original_name = models.CharField(max_length=255)
    size = models.PositiveBigIntegerField(help_text="Bytes, as uploaded.")
    # Parser items the file holds (sacct and SWF: one per job or step line; slurmrestd:
    # one per job), counted at upload: the denominator of the progress.
    rows_total = models.PositiveIntegerField(default=0)
    batch_size = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    error = models.TextField(blank=True)

    # Where the current run is: reset by every run, which re-reads the file from the start.
    bytes_read = models.PositiveBigIntegerField(default=0)
    lines_read = models.PositiveBigIntegerField(default=0)
    checkpoint = models.PositiveIntegerField(default=0)
    resumed_from = models.PositiveIntegerField(default=0)

    jobs_charged = models.PositiveIntegerField(default=0)
    usage_created = models.PositiveIntegerField(default=0)
    duplicates = models.PositiveIntegerField(default=0)
    corrected = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    rejected_lines = models.PositiveIntegerField(default=0)
    uncharged_jobs = models.PositiveIntegerField(default=0)
    # Signed: corrections may lower a job's charge.
    su_charged = su_field(default=0)

    attempts = models.PositiveIntegerField(default=0)
    runner = models.UUIDField(null=True, blank=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [
            # The stale sweep: queued or running imports by their last sign of life.
            models.Index(
                fields=["heartbeat_at"],
                condition=Q(state__in=["queued", "running"]),
                name="alloc_import_unfinished",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=["queued", "running", "done", "failed"]),
                name="allocations_usageimport_valid_state",
            ),
            models.CheckConstraint(
                condition=Q(format__in=["sacct", "slurmrestd", "swf"]),
                name="allocations_usageimport_valid_format",
            ),
            # Times of slurmrestd and SWF are epoch seconds: a zone would mean nothing.
            models.CheckConstraint(
                condition=Q(format="sacct") | Q(tz=""),
                name="allocations_usageimport_tz_only_for_sacct",
            ),
            # Started by a person or by a cluster's importer token, never both or neither.
            models.CheckConstraint(
                condition=Q(created_by__isnull=True, token__isnull=False)
                | Q(created_by__isnull=False, token__isnull=True),
                name="allocations_usageimport_one_starter",
            ),
            models.CheckConstraint(
                condition=Q(batch_size__gte=1), name="allocations_usageimport_batch_positive"
            ),
            models.CheckConstraint(
                condition=Q(resumed_from__lte=F("checkpoint")),
                name="allocations_usageimport_resumed_within_checkpoint",
            ),
            # Only a running import has a runner, and a finished one has its end time.
            models.CheckConstraint(
                condition=Q(state="running") | Q(runner__isnull=True),
                name="allocations_usageimport_runner_only_when_running",
            ),
            models.CheckConstraint(
                condition=(Q(state__in=["done", "failed"]) & Q(finished_at__isnull=False))
                | (~Q(state__in=["done", "failed"]) & Q(finished_at__isnull=True)),
                name="allocations_usageimport_finished_iff_ended",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.original_name} on {self.cluster.name} ({self.state})"

    @property
    def started_by(self) -> str:
        if self.token_id is not None:
            return f"importer:{self.cluster.name}:{self.token.prefix}"
        return self.created_by.username if self.created_by_id else ""


class UsageImportReject(models.Model):
    """A line of an import that was not charged, with why: the rejects CSV."""

    usage_import = models.ForeignKey(UsageImport, on_delete=models.PROTECT, related_name="rejects")
    # 1-based line of a text file, 0-based index in a slurmrestd jobs list; empty for a
    # fault of the whole document.
    line = models.PositiveIntegerField(null=True, blank=True)
    job_id = models.CharField(max_length=64, blank=True)
    field = models.CharField(max_length=64, blank=True)
    reason = models.TextField()

    class Meta:
        ordering = ["usage_import", "id"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(reason=""), name="allocations_usageimportreject_has_reason"
            ),
        ]

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class SyncReport(models.Model):
    """Append-only record of one run of the scheduler sync client (client/su_sync.py):
    what differed between the portal's desired state and Slurm, and what it changed."""

    class Mode(models.TextChoices):
        DRY_RUN = "DRY_RUN", "Dry run"
        APPLY = "APPLY", "Apply"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="sync_reports")
    token = models.ForeignKey(
        "accounts.ApiToken", on_delete=models.PROTECT, related_name="+", null=True, blank=True
    )
    mode = models.CharField(max_length=8, choices=Mode.choices)
    succeeded = models.BooleanField()
    # [{"kind", "account", "user", "current", "desired"}], as the client found it.
    drift = models.JSONField(default=list, blank=True)
    # Kept so the cluster list can show the last run's drift without reading the JSON.
    drift_count = models.PositiveIntegerField(default=0)
    # The sacctmgr commands that succeeded, in the order they ran.
    applied = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    client_version = models.CharField(max_length=32, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [
            # The cluster admin list: each cluster's latest report.
            models.Index(fields=["cluster", "-created"], name="alloc_syncreport_latest"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(mode__in=["DRY_RUN", "APPLY"]), name="allocations_syncreport_valid_mode"
            ),
            models.CheckConstraint(
                condition=(Q(succeeded=True) & Q(error="")) | (Q(succeeded=False) & ~Q(error="")),
                name="allocations_syncreport_error_iff_failed",
                violation_error_message="A failed run says why; a successful one has no error.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_mode_display()} on {self.cluster.name} at {self.created:%Y-%m-%d %H:%M}"


class ClusterCapacityChange(models.Model):
    """Append-only record of a change to a cluster's monthly capacity. Cluster holds the
    current value; these rows say who changed it, when, from what and why."""

    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="capacity_changes")
    # Empty: no capacity set (commitment is then shown without a percentage).
    old_su_capacity_per_month = su_field(null=True, blank=True)
    new_su_capacity_per_month = su_field(null=True, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    reason = models.TextField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [
            # The capacity page: a cluster's changes, newest first.
            models.Index(fields=["cluster", "created"], name="alloc_capacity_history"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(new_su_capacity_per_month__isnull=True)
                | Q(new_su_capacity_per_month__gt=0),
                name="allocations_clustercapacitychange_capacity_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.cluster.name} capacity on {self.created:%Y-%m-%d}"


# --- analytics and scheduled work ------------------------------------------------------


class UsageDaily(models.Model):
    """Rollup: an allocation's usage per member, resource and UTC day of charged_at.

    Charts and reports read these rows, never the usage table. su is the net charge of
    the day's jobs (their su_amount plus every adjustment, so a refunded job leaves its
    day); raw is their raw unit-seconds as last reported; jobs counts usage records.
    Derived data: rollups.rollups_refresh rebuilds any (allocation, day) from the records
    and rollups.rollups_drift says whether they still match.
    """

    # The unique key leads with the allocation: it serves the allocation's lookups.
    allocation = models.ForeignKey(
        Allocation, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    resource = models.ForeignKey(Resource, on_delete=models.PROTECT, related_name="+")
    day = models.DateField()
    su = su_field()
    raw = models.DecimalField(max_digits=RAW_DIGITS, decimal_places=RAW_PLACES)
    jobs = models.PositiveIntegerField()

    class Meta:
        ordering = ["allocation", "day"]
        indexes = [
            # Cluster charts: usage of a cluster's allocations by day.
            models.Index(fields=["day", "allocation"], name="alloc_usagedaily_day"),
            # Allocation charts (selectors.rollup_usage_by_day, usage_by_*_day): an
            # index-only scan of one allocation's days. The rows of an allocation are
            # scattered over the table as days are written, so reading su from the heap
            # cost a page per row.
            models.Index(
                fields=["allocation", "day"],
                include=["user", "resource", "su"],
                name="alloc_usagedaily_charts",
            ),
            # The allocation page's totals by resource (selectors.allocation_overview):
            # read from the index alone, in resource order, however long the history.
            models.Index(
                fields=["allocation", "resource", "user", "su"], name="alloc_usagedaily_resource"
            ),
        ]
        constraints = [
            # Leads with (allocation, day): the burn-down and member charts' range scan.
            models.UniqueConstraint(
                fields=["allocation", "day", "user", "resource"],
                name="allocations_usagedaily_one_per_key",
            ),
            models.CheckConstraint(
                condition=Q(su__gte=0), name="allocations_usagedaily_su_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(raw__gte=0), name="allocations_usagedaily_raw_not_negative"
            ),
            models.CheckConstraint(condition=Q(jobs__gt=0), name="allocations_usagedaily_has_jobs"),
        ]

    def __str__(self) -> str:
        return f"{self.day}: {self.su} SU on allocation {self.allocation_id}"


class AlertSent(models.Model):
    """Append-only record of a warning e-mail: the unique constraints make it the claim,
    so a task run twice (or redelivered) finds the row and sends nothing.

    USAGE: usage reached `threshold` percent of `basis` (the allocation's budget, or the
    member's cap, when it crossed). A supplement that brings usage back under the
    threshold re-arms it: the next crossing is of another basis.
    ENDING: `threshold` days or fewer were left before `end`; an extension re-arms it.
    """

    class Kind(models.TextChoices):
        USAGE = "USAGE", "Usage threshold"
        ENDING = "ENDING", "End date near"

    allocation = models.ForeignKey(Allocation, on_delete=models.PROTECT, related_name="+")
    # Empty: about the allocation as a whole; else about one member.
    membership = models.ForeignKey(
        Membership, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    threshold = models.PositiveSmallIntegerField()
    basis = su_field(null=True, blank=True)
    end = models.DateField(null=True, blank=True)
    recipients = models.TextField(blank=True)
    created = models.DateTimeField()

    class Meta:
        ordering = ["created", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=["USAGE", "ENDING"]), name="allocations_alertsent_valid_kind"
            ),
            models.CheckConstraint(
                condition=(~Q(kind="USAGE") | Q(basis__isnull=False, end__isnull=True))
                & (~Q(kind="ENDING") | Q(basis__isnull=True, end__isnull=False)),
                name="allocations_alertsent_fields_match_kind",
            ),
            models.CheckConstraint(
                condition=Q(threshold__gte=1) & (~Q(kind="USAGE") | Q(threshold__lte=100)),
                name="allocations_alertsent_threshold_in_range",
            ),
            # NULLs never clash in a unique index, so each kind gets its own partial one
            # over the columns it fills.
            models.UniqueConstraint(
                fields=["allocation", "threshold", "basis"],
                condition=Q(kind="USAGE", membership__isnull=True),
                name="allocations_alertsent_once_per_allocation_crossing",
            ),
            models.UniqueConstraint(
                fields=["membership", "threshold", "basis"],
                condition=Q(kind="USAGE", membership__isnull=False),
                name="allocations_alertsent_once_per_member_crossing",
            ),
            models.UniqueConstraint(
                fields=["allocation", "threshold", "end"],
                condition=Q(kind="ENDING", membership__isnull=True),
                name="allocations_alertsent_once_per_allocation_end",
            ),
            models.UniqueConstraint(
                fields=["membership", "threshold", "end"],
                condition=Q(kind="ENDING", membership__isnull=False),
                name="allocations_alertsent_once_per_member_end",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.threshold} on allocation {self.allocation_id}"


class TaskFailure(models.Model):
    """A background task that raised, recorded by a Celery signal: counters kept in a
    worker's memory would vanish with the process, and /metrics reads these rows."""

    task = models.CharField(max_length=200)
    task_id = models.CharField(max_length=255, blank=True)
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(task=""), name="allocations_taskfailure_names_task"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task} failed at {self.created:%Y-%m-%d %H:%M}"
