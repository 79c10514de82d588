"""Forms of the Django admin. They check shape only: the domain's rules live in services.py,
and a refusal from a service is shown on the form by show_refusal()."""

from django import forms
from django.core.exceptions import PermissionDenied, ValidationError

from allocations.models import ChangeRequest, Cluster, Rate, UsageImport


def show_refusal(
    form: forms.BaseForm,
    refusal: ValidationError | PermissionDenied,
    rename: dict[str, str] | None = None,
) -> None:
    """Puts a service's refusal on the form: beside the field it names when the form has
    that field (after `rename`, for services whose argument names differ from the form's),
    above the form otherwise."""
    if isinstance(refusal, PermissionDenied):
        form.add_error(None, str(refusal) or "You may not do this.")
        return
    if not hasattr(refusal, "error_dict"):
        form.add_error(None, refusal)
        return
    for name, errors in refusal.error_dict.items():
        name = (rename or {}).get(name, name)
        form.add_error(name if name in form.fields else None, errors)


class ServiceModelForm(forms.ModelForm):
    """A form the admin saves through a service. `refusal` is set (on a per-request
    subclass) when the service refused this very POST, so it shows as form errors."""

    refusal: ValidationError | PermissionDenied | None = None
    # Service argument names that differ from the form's field names.
    service_fields: dict[str, str] = {}

    def clean(self):
        cleaned_data = super().clean()
        if self.refusal is not None:
            show_refusal(self, self.refusal, rename=self.service_fields)
        return cleaned_data


def _reason_field(label: str = "Reason", required: bool = False) -> forms.CharField:
    return forms.CharField(label=label, required=required, widget=forms.Textarea(attrs={"rows": 3}))


class ProjectForm(ServiceModelForm):
    service_fields = {"user": "managers"}


class AllocationAddForm(ServiceModelForm):
    """A new allocation is a request: INACTIVE until its change request is approved."""

    su_amount = forms.DecimalField(label="SUs requested")
    justification = _reason_field("Justification", required=True)
    priority = forms.TypedChoiceField(
        choices=ChangeRequest.Priority.choices,
        coerce=int,
        initial=ChangeRequest.Priority.NORMAL,
    )


class AllocationChangeForm(ServiceModelForm):
    su_delta = forms.DecimalField(
        label="SUs to add", required=False, help_text="Negative to take unused SUs back."
    )
    reason = _reason_field()


class RateChangeForm(ServiceModelForm):
    """An existing window can be ended (or ended earlier) and its value corrected."""

    close_reason = _reason_field("Why the window ends")
    corrected_su_per_unit_hour = forms.DecimalField(
        label="Corrected SU per unit-hour",
        required=False,
        max_digits=20,
        decimal_places=6,
        help_text="The usage charged at this rate is re-rated in the background, as "
        "adjustments: the original charges stay visible.",
    )
    correction_reason = _reason_field("Why the rate is corrected")
    service_fields = {
        "su_per_unit_hour": "corrected_su_per_unit_hour",
        "reason": "correction_reason",
    }

    class Meta:
        model = Rate
        fields = ["end"]

    def clean_end(self):
        end = self.cleaned_data["end"]
        # Never reopened: usage may have been charged at the rate that follows it.
        if end is None and self.instance.end is not None:
            raise ValidationError("A window that has ended cannot be reopened.")
        return end


class MembershipAddForm(ServiceModelForm):
    reason = _reason_field()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["start"].required = False
        self.fields["start"].help_text = "Empty: the allocation's start."


class MembershipChangeForm(ServiceModelForm):
    reason = _reason_field()


class ReasonForm(forms.Form):
    """The intermediate page of an admin action that records why."""

    reason = _reason_field(required=True)


class DecideForm(forms.Form):
    APPROVE, REJECT, COMMENT = "approve", "reject", "comment"

    decision = forms.ChoiceField(
        choices=[
            (APPROVE, "Approve"),
            (REJECT, "Reject"),
            (COMMENT, "Comment only (the request stays pending)"),
        ],
        widget=forms.RadioSelect,
    )
    su_approved = forms.DecimalField(
        label="SUs to grant",
        required=False,
        help_text="Empty: as requested. A different amount needs a reason.",
    )
    reason = _reason_field("Reason or comment")

    service_fields = {"text": "reason", "su_delta": "su_approved"}


class UsageImportForm(forms.Form):
    """The admin's "Import usage" page; usage_import_create checks the file itself."""

    cluster = forms.ModelChoiceField(queryset=Cluster.objects.none())
    format = forms.ChoiceField(choices=UsageImport.Format.choices)
    tz = forms.CharField(
        label="Time zone",
        max_length=64,
        required=False,
        help_text="sacct only: the zone sacct printed times in (blank: UTC, as with TZ=UTC).",
    )
    file = forms.FileField(help_text="The accounting file, plain text or gzip.")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        clusters = Cluster.objects.order_by("name")
        if not user.is_superuser:
            clusters = clusters.filter(admins=user)
        self.fields["cluster"].queryset = clusters
