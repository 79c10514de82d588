"""Forms of the review pages. They check shape only; the rules live in services.py, and a
service's refusal is put beside the field it names by show_refusal()."""

import uuid

from django import forms
from django.core.exceptions import ValidationError

from allocations.forms import show_refusal
from allocations.models import ChangeRequest, Cluster, Resource
from allocations.portal_forms import PortalForm, su_field

__all__ = [
    "ApproveForm",
    "BulkApproveForm",
    "CapacityForm",
    "CommentForm",
    "QueueFilterForm",
    "RateAddForm",
    "RateCloseForm",
    "RejectForm",
    "StatusForm",
    "show_refusal",
]


def _text(label: str, required: bool = True, rows: int = 3, **kwargs) -> forms.CharField:
    return forms.CharField(
        label=label, required=required, widget=forms.Textarea(attrs={"rows": rows}), **kwargs
    )


class _DateTimeInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self):
        super().__init__(format="%Y-%m-%dT%H:%M")


class ApproveForm(PortalForm):
    su_approved = su_field(
        "SUs to grant",
        required=False,
        help_text="Empty: as requested. Another amount needs a reason.",
    )
    reason = _text("Reason", required=False, help_text="Shown to the requester and the PI.")
    service_fields = {"su_delta": "su_approved"}


class RejectForm(PortalForm):
    reason = _text("Why it is rejected", help_text="Shown to the requester and the PI.")


class CommentForm(PortalForm):
    text = _text("Comment", help_text="The request stays pending; the requester and PI are told.")


class BulkApproveForm(PortalForm):
    """Approve several requests as asked, all or nothing."""

    requests = forms.ModelMultipleChoiceField(
        queryset=ChangeRequest.objects.none(),
        to_field_name="code",
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one request to approve."},
    )

    def __init__(self, *args, queue, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["requests"].queryset = queue


class _ClusterChoice(forms.ModelChoiceField):
    """One of the clusters given, found among them rather than by a query of its own."""

    clusters: list[Cluster] = []

    def to_python(self, value):
        if value in self.empty_values:
            return None
        try:
            code = uuid.UUID(str(value))
        except ValueError:
            code = None
        for cluster in self.clusters:
            if cluster.code == code:
                return cluster
        raise ValidationError(
            self.error_messages["invalid_choice"], code="invalid_choice", params={"value": value}
        )


class QueueFilterForm(PortalForm):
    cluster = _ClusterChoice(
        queryset=Cluster.objects.none(),
        to_field_name="code",
        required=False,
        empty_label="All my clusters",
    )
    max_su = su_field(
        "Asking for at most (SU)",
        required=False,
        min_value=0,
        help_text="Show only the small requests.",
    )

    def __init__(self, *args, clusters: list[Cluster], **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["cluster"]
        field.clusters = clusters
        # The options from the clusters the page lists anyway (one query for both).
        field.choices = [
            ("", field.empty_label),
            *((cluster.code, field.label_from_instance(cluster)) for cluster in clusters),
        ]


class StatusForm(PortalForm):
    reason = _text("Reason", help_text="Recorded in the history with your name and the time.")


class RateAddForm(PortalForm):
    resource = forms.ModelChoiceField(queryset=Resource.objects.none(), to_field_name="code")
    su_per_unit_hour = forms.DecimalField(
        label="SU per unit-hour",
        max_digits=20,
        decimal_places=6,
        min_value=0,
        help_text="SUs charged for one unit (one GPU, one core) used for one hour.",
    )
    start = forms.DateTimeField(label="From (UTC)", widget=_DateTimeInput())
    end = forms.DateTimeField(
        label="Until (UTC)",
        required=False,
        widget=_DateTimeInput(),
        help_text="Exclusive. Empty: open-ended.",
    )
    reason = _text("Reason", required=False, rows=2)

    def __init__(self, *args, cluster, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["resource"].queryset = cluster.resources.order_by("name")


class RateCloseForm(PortalForm):
    end = forms.DateTimeField(
        label="End the window at (UTC)",
        widget=_DateTimeInput(),
        help_text="Exclusive: usage from this time on needs another window.",
    )
    reason = _text("Reason", required=False, rows=2)


class CapacityForm(PortalForm):
    su_capacity_per_month = su_field(
        "Capacity (SU per month)",
        required=False,
        help_text="What the cluster can give out in a month. Empty: no capacity set.",
    )
    reason = _text("Why it changes")
