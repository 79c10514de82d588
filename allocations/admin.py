"""The Django admin of the allocation domain.

Every write goes through services.py with request.user as the actor, so a click here
writes exactly what the API would, and is refused for the same reasons. Nothing is
deleted, and the append-only records (diffs, events, usage) are view-only.
"""

from decimal import Decimal

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import model_ngettext, unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import OuterRef, Subquery
from django.http import Http404, HttpResponseRedirect, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from allocations import services
from allocations.adjustments import rate_correct
from allocations.forms import (
    AllocationAddForm,
    AllocationChangeForm,
    DecideForm,
    MembershipAddForm,
    MembershipChangeForm,
    ProjectForm,
    RateChangeForm,
    ReasonForm,
    ServiceModelForm,
    UsageImportForm,
    show_refusal,
)
from allocations.imports import is_stale, usage_import_create, usage_import_resume
from allocations.models import (
    Allocation,
    AllocationChange,
    ChangeRequest,
    ChangeRequestEvent,
    Cluster,
    Hold,
    Membership,
    MembershipChange,
    Project,
    ProjectChange,
    Rate,
    RateCorrection,
    Resource,
    Status,
    SyncReport,
    TresMapping,
    Usage,
    UsageAdjustment,
    UsageImport,
)
from allocations.selectors import (
    usage_import_list_for,
    usage_import_progress,
    usage_import_rejects_csv,
)

# --- shared pieces -------------------------------------------------------------------


class NoDeleteAdmin(admin.ModelAdmin):
    """Nothing is ever deleted: statuses go to DELETED and history stays. Without the
    delete permission the admin also drops the "delete selected" action.

    `cluster_lookup` is the path from the model to its cluster ("" for Cluster itself):
    staff who are not site admins see only rows of clusters they administer, in lists,
    change pages and autocompletes alike, whatever model permissions they hold."""

    cluster_lookup: str | None = None

    def has_delete_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        if self.cluster_lookup is None or request.user.is_superuser:
            return qs
        admins = f"{self.cluster_lookup}__admins" if self.cluster_lookup else "admins"
        # A subquery, not a join: a project with several allocations is listed once.
        mine = self.model.objects.filter(**{admins: request.user}).values("pk")
        return qs.filter(pk__in=mine)


class ReadOnlyAdmin(NoDeleteAdmin):
    """Append-only records: written by services only, never edited."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class _Refused(Exception):
    def __init__(self, refusal: ValidationError | PermissionDenied):
        self.refusal = refusal


_REFUSAL = "_service_refusal"


class ServiceSaveAdmin(NoDeleteAdmin):
    """An admin whose add and change forms save through a service.

    The service is the validation, so its rules are not repeated in form clean(): when it
    refuses, the admin's transaction rolls back and the same POST is shown again with the
    refusal on the form (ServiceModelForm), beside the field it names.

    Each subclass defines save_with_service(request, obj, form, change): it writes through
    a service and returns the object it saved, or None when `obj` itself is up to date.
    """

    form = ServiceModelForm
    add_form: type[ServiceModelForm] | None = None
    add_fieldsets = None

    def get_fieldsets(self, request, obj=None):
        if obj is None and self.add_fieldsets is not None:
            return self.add_fieldsets
        return super().get_fieldsets(request, obj)

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None and self.add_form is not None:
            kwargs["form"] = self.add_form
        form = super().get_form(request, obj, change=change, **kwargs)
        refusal = getattr(request, _REFUSAL, None)
        if refusal is not None:
            form = type(form.__name__, (form,), {"refusal": refusal})
        return form

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except _Refused as refused:
            setattr(request, _REFUSAL, refused.refusal)
            return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        try:
            saved = self.save_with_service(request, obj, form, change)
        except (ValidationError, PermissionDenied) as refusal:
            raise _Refused(refusal) from refusal
        if saved is not None and saved is not obj:
            # The admin logs the change and redirects with the form's instance.
            obj.__dict__.update(saved.__dict__)

    def save_related(self, request, form, formsets, change):
        pass  # the services save many-to-many fields themselves


def _refusal_text(refusal: ValidationError | PermissionDenied) -> str:
    if isinstance(refusal, ValidationError):
        return " ".join(refusal.messages)
    return str(refusal) or "You may not do this."


def apply_each(modeladmin, request, queryset, write, done: str) -> None:
    """Calls a service once per selected object, each in its own transaction, so one
    refusal does not undo the others; every refusal is reported with its object."""
    count = 0
    for obj in queryset:
        try:
            write(obj)
        except (ValidationError, PermissionDenied) as refusal:
            modeladmin.message_user(request, f"{obj}: {_refusal_text(refusal)}", messages.ERROR)
        else:
            count += 1
    if count:
        noun = model_ngettext(modeladmin.opts, count)
        modeladmin.message_user(request, f"{done} {count} {noun}.", messages.SUCCESS)


def _with_reason(modeladmin, request, queryset, *, action: str, title: str, apply):
    """The usual intermediate page of admin action `action`: the POST from the changelist
    shows a reason form, the confirming POST ("apply") runs `apply(reason)`."""
    form = ReasonForm(request.POST if "apply" in request.POST else None)
    if form.is_valid():
        apply(form.cleaned_data["reason"])
        return None  # back to the changelist, which shows the messages
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "opts": modeladmin.opts,
        "queryset": queryset,
        "form": form,
        "action": action,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/action_reason.html", context)


def _status_action(modeladmin, request, queryset, *, action, status, title, write):
    """A status action with a reason page: write(obj, reason) for each selected object."""
    return _with_reason(
        modeladmin,
        request,
        queryset,
        action=action,
        title=title,
        apply=lambda reason: apply_each(
            modeladmin,
            request,
            queryset,
            lambda obj: write(obj, reason),
            done=f"Set to {status}:",
        ),
    )


def _changelist_link(model, text: str, **filters) -> str:
    url = reverse(f"admin:allocations_{model._meta.model_name}_changelist")
    return format_html('<a href="{}?{}">{}</a>', url, urlencode(filters), text)


# --- projects --------------------------------------------------------------------------


@admin.register(Project)
class ProjectAdmin(ServiceSaveAdmin):
    cluster_lookup = "allocations__cluster"
    form = ProjectForm
    list_display = ("title", "pi", "origination", "originated_id", "status", "created")
    list_select_related = ("pi",)
    list_filter = ("status", "origination")
    search_fields = ("title", "originated_id", "pi__username", "pi__last_name")
    autocomplete_fields = ("pi", "managers")
    date_hierarchy = "created"
    actions = ("freeze", "unfreeze")
    add_fieldsets = (
        (None, {"fields": ("title", "description", "pi", "managers")}),
        ("Origin", {"fields": ("origination", "originated_id")}),
    )
    fieldsets = (
        (None, {"fields": ("title", "description", "pi", "managers", "status")}),
        ("Origin", {"fields": ("origination", "originated_id", "code", "created")}),
    )

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return ("pi", "status", "origination", "originated_id", "code", "created")

    def save_with_service(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            # No service owns the free text; save only it, so a concurrent status change
            # is not overwritten.
            text = [name for name in ("title", "description") if name in form.changed_data]
            if text:
                obj.save(update_fields=text)
            project = obj
        else:
            project = services.project_create(
                actor=request.user,
                title=data["title"],
                pi=data["pi"],
                description=data["description"],
                origination=data["origination"],
                originated_id=data["originated_id"],
            )
        current = set(project.managers.all()) if change else set()
        wanted = set(data["managers"])
        for user in wanted - current:
            services.project_add_manager(actor=request.user, project=project, user=user)
        for user in current - wanted:
            services.project_remove_manager(actor=request.user, project=project, user=user)
        return project

    def _set_status(self, request, queryset, action: str, status: str, title: str):
        return _status_action(
            self,
            request,
            queryset,
            action=action,
            status=status,
            title=title,
            write=lambda project, reason: services.project_set_status(
                actor=request.user, project=project, status=status, reason=reason
            ),
        )

    @admin.action(description="Freeze selected projects (set INACTIVE)")
    def freeze(self, request, queryset):
        return self._set_status(request, queryset, "freeze", Status.INACTIVE, "Freeze projects")

    @admin.action(description="Unfreeze selected projects (set ACTIVE)")
    def unfreeze(self, request, queryset):
        return self._set_status(request, queryset, "unfreeze", Status.ACTIVE, "Unfreeze projects")


@admin.register(ProjectChange)
class ProjectChangeAdmin(ReadOnlyAdmin):
    cluster_lookup = "project__allocations__cluster"
    list_display = ("project", "kind", "status", "subject", "actor", "reason", "created")
    list_select_related = ("project", "subject", "actor")
    list_filter = ("kind", "status")
    search_fields = ("project__title", "subject__username", "actor__username", "reason")
    autocomplete_fields = ("project", "subject", "actor")
    date_hierarchy = "created"


# --- clusters, resources, rates ----------------------------------------------------------


@admin.register(Cluster)
class ClusterAdmin(NoDeleteAdmin):
    cluster_lookup = ""
    list_display = (
        "name",
        "title",
        "su_capacity_per_month",
        "su_per_billing_unit_hour",
        "last_sync",
        "last_sync_drift",
    )
    list_filter = (("su_capacity_per_month", admin.EmptyFieldListFilter),)
    search_fields = ("name", "title")
    autocomplete_fields = ("admins",)

    def get_readonly_fields(self, request, obj=None):
        # Capacity changes are recorded (who, when, why) by services.cluster_set_capacity,
        # which the review pages' Capacity tab calls; here it is set only at creation.
        fixed = ("code", "last_sync", "last_sync_drift")
        if obj:
            fixed = (*fixed, "su_capacity_per_month")
        # Who administers a cluster is a role; only site admins hand roles out.
        if request.user.is_superuser:
            return fixed
        return (*fixed, "admins")

    def get_queryset(self, request):
        # The latest report of each cluster in the same query (alloc_syncreport_latest).
        latest = SyncReport.objects.filter(cluster=OuterRef("pk")).order_by("-created", "-id")
        return (
            super()
            .get_queryset(request)
            .annotate(
                last_sync_at=Subquery(latest.values("created")[:1]),
                last_sync_mode=Subquery(latest.values("mode")[:1]),
                last_sync_succeeded=Subquery(latest.values("succeeded")[:1]),
                last_sync_drift_count=Subquery(latest.values("drift_count")[:1]),
            )
        )

    @admin.display(description="Last sync", ordering="last_sync_at")
    def last_sync(self, cluster: Cluster) -> str:
        if cluster.last_sync_at is None:
            return "never"
        outcome = "ok" if cluster.last_sync_succeeded else "FAILED"
        mode = SyncReport.Mode(cluster.last_sync_mode).label.lower()
        text = f"{cluster.last_sync_at:%Y-%m-%d %H:%M} UTC, {mode}, {outcome}"
        return _changelist_link(SyncReport, text, cluster__id__exact=cluster.pk)

    @admin.display(description="Drift at last sync")
    def last_sync_drift(self, cluster: Cluster):
        return cluster.last_sync_drift_count


@admin.register(SyncReport)
class SyncReportAdmin(ReadOnlyAdmin):
    cluster_lookup = "cluster"
    list_display = (
        "created",
        "cluster",
        "mode",
        "succeeded",
        "drift_count",
        "applied_count",
        "client_version",
    )
    list_select_related = ("cluster",)
    list_filter = ("cluster", "mode", "succeeded")
    date_hierarchy = "created"
    readonly_fields = ("drift_table", "applied_commands")
    fields = (
        "cluster",
        "token",
        "created",
        "mode",
        "succeeded",
        "error",
        "client_version",
        "drift_count",
        "drift_table",
        "applied_commands",
    )

    @admin.display(description="Commands applied")
    def applied_count(self, report: SyncReport) -> int:
        return len(report.applied)

    @admin.display(description="Drift")
    def drift_table(self, report: SyncReport) -> str:
        rows = [
            (
                d.get("kind", ""),
                d.get("account", ""),
                d.get("user", ""),
                d.get("current", ""),
                d.get("desired", ""),
            )
            for d in report.drift
        ]
        if not rows:
            return "none"
        return format_html(
            "<table><tr><th>kind</th><th>account</th><th>user</th><th>current</th>"
            "<th>desired</th></tr>{}</table>",
            format_html_join("", "<tr>" + "<td>{}</td>" * 5 + "</tr>", rows),
        )

    @admin.display(description="Commands applied, in order")
    def applied_commands(self, report: SyncReport) -> str:
        if not report.applied:
            return "none"
        return format_html("<pre>{}</pre>", "\n".join(report.applied))


@admin.register(Resource)
class ResourceAdmin(NoDeleteAdmin):
    cluster_lookup = "cluster"
    list_display = ("name", "cluster", "kind", "unit", "amount")
    list_select_related = ("cluster",)
    list_filter = ("kind", "cluster")
    search_fields = ("name", "cluster__name")
    autocomplete_fields = ("cluster",)
    readonly_fields = ("code",)


@admin.register(TresMapping)
class TresMappingAdmin(NoDeleteAdmin):
    cluster_lookup = "cluster"
    list_display = ("cluster", "partition", "tres", "resource", "scale")
    list_select_related = ("cluster", "resource")
    list_filter = ("cluster",)
    search_fields = ("tres", "partition", "cluster__name", "resource__name")
    autocomplete_fields = ("cluster", "resource")


@admin.register(Rate)
class RateAdmin(ServiceSaveAdmin):
    cluster_lookup = "resource__cluster"
    form = RateChangeForm
    add_form = ServiceModelForm
    list_display = ("resource", "su_per_unit_hour", "reading", "start", "end", "created_by")
    list_select_related = ("resource__cluster", "created_by")
    list_filter = ("resource__cluster", "resource__kind")
    search_fields = ("resource__name", "resource__cluster__name")
    autocomplete_fields = ("resource",)
    add_fieldsets = (
        (None, {"fields": ("resource", "su_per_unit_hour", "start", "end", "reason")}),
    )
    fieldsets = (
        (None, {"fields": ("resource", "su_per_unit_hour", "reading", "start", "reason")}),
        ("End this window", {"fields": ("end", "close_reason")}),
        ("Correct this rate", {"fields": ("corrected_su_per_unit_hour", "correction_reason")}),
        (None, {"fields": ("created_by", "created", "code")}),
    )

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return (
            "resource",
            "su_per_unit_hour",
            "reading",
            "start",
            "reason",
            "created_by",
            "created",
            "code",
        )

    @admin.display(description="Reading")
    def reading(self, rate: Rate) -> str:
        # The source documents read rates both ways; show both so nobody misreads one.
        unit, value = rate.resource.unit, rate.su_per_unit_hour
        text = f"1 {unit}-hour = {value.normalize():f} SU"
        if value:
            per_su = (1 / value).quantize(Decimal("0.0001")).normalize()
            text += f", i.e. 1 SU = {per_su:f} {unit}-hours"
        return text

    def save_with_service(self, request, obj, form, change):
        data = form.cleaned_data
        if not change:
            return services.rate_add(
                actor=request.user,
                resource=data["resource"],
                su_per_unit_hour=data["su_per_unit_hour"],
                start=data["start"],
                end=data["end"],
                reason=data["reason"],
            )
        saved = None
        if data.get("corrected_su_per_unit_hour") is not None:
            rate_correct(
                actor=request.user,
                rate=obj,
                su_per_unit_hour=data["corrected_su_per_unit_hour"],
                reason=data["correction_reason"],
            )
            saved = Rate.objects.get(pk=obj.pk)
        if "end" in form.changed_data and data["end"] is not None:
            saved = services.rate_close(
                actor=request.user, rate=obj, end=data["end"], reason=data["close_reason"]
            )
        return saved


@admin.register(RateCorrection)
class RateCorrectionAdmin(ReadOnlyAdmin):
    cluster_lookup = "rate__resource__cluster"
    list_display = (
        "rate",
        "old_su_per_unit_hour",
        "new_su_per_unit_hour",
        "actor",
        "created",
        "rerated_at",
    )
    list_select_related = ("rate__resource__cluster", "actor")
    list_filter = ("rate__resource__cluster",)
    search_fields = ("rate__resource__name", "reason")
    autocomplete_fields = ("rate", "actor")
    date_hierarchy = "created"


# --- allocations, requests and diffs -----------------------------------------------------


@admin.register(Allocation)
class AllocationAdmin(ServiceSaveAdmin):
    cluster_lookup = "cluster"
    form = AllocationChangeForm
    add_form = AllocationAddForm
    list_display = (
        "name",
        "project",
        "cluster",
        "status",
        "su_budget",
        "su_used",
        "su_held",
        "remaining",
        "start",
        "end",
    )
    list_select_related = ("project", "cluster")
    list_filter = ("status", "cluster")
    search_fields = ("name", "project__title", "cluster__name")
    autocomplete_fields = ("project", "cluster", "resources")
    add_fieldsets = (
        (None, {"fields": ("project", "cluster", "name", "resources", "start", "end")}),
        (
            "Request",
            {
                "description": "The allocation starts INACTIVE with a pending change request "
                "for these SUs; approving the request activates it.",
                "fields": ("su_amount", "justification", "priority"),
            },
        ),
    )
    fieldsets = (
        (None, {"fields": ("project", "cluster", "name", "resources", "start", "records")}),
        ("Balance", {"fields": ("su_budget", "su_used", "su_held", "remaining")}),
        (
            "Change allocation",
            {
                "description": "Saving writes one change (diff) to the allocation's history.",
                "fields": ("status", "end", "su_delta", "reason"),
            },
        ),
        (None, {"fields": ("code", "created")}),
    )
    # Set when the allocation is requested; the budget, status and end change only by diffs.
    _fixed = ("project", "cluster", "name", "resources", "start", "code", "created")
    _maintained = ("su_budget", "su_used", "su_held", "remaining")

    def get_readonly_fields(self, request, obj=None):
        return self._maintained if obj is None else (*self._fixed, *self._maintained, "records")

    @admin.display(description="Remaining")
    def remaining(self, allocation: Allocation) -> str:
        remaining = allocation.su_remaining
        return f"{remaining} (overdrawn)" if remaining < 0 else str(remaining)

    @admin.display(description="Records")
    def records(self, allocation: Allocation) -> str:
        links = [
            _changelist_link(AllocationChange, "History", allocation__id__exact=allocation.pk),
            _changelist_link(ChangeRequest, "Requests", allocation__id__exact=allocation.pk),
            _changelist_link(Membership, "Members", allocation__id__exact=allocation.pk),
            _changelist_link(Usage, "Usage", allocation__id__exact=allocation.pk),
        ]
        return format_html(" | ".join(["{}"] * len(links)), *links)

    def save_with_service(self, request, obj, form, change):
        data = form.cleaned_data
        if not change:
            return services.allocation_request_create(
                actor=request.user,
                project=data["project"],
                cluster=data["cluster"],
                name=data["name"],
                resources=data["resources"],
                su_amount=data["su_amount"],
                start=data["start"],
                end=data["end"],
                justification=data["justification"],
                priority=data["priority"],
            ).allocation
        if form.has_changed():
            changed = form.changed_data
            services.allocation_change_apply(
                actor=request.user,
                allocation=obj,
                reason=data["reason"],
                su_delta=data["su_delta"],
                status=data["status"] if "status" in changed else "",
                end=data["end"] if "end" in changed else None,
            )
        return None


class ChangeRequestEventInline(ReadOnlyInline):
    model = ChangeRequestEvent
    fields = ("created", "kind", "actor", "text")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("actor")


@admin.register(ChangeRequest)
class ChangeRequestAdmin(NoDeleteAdmin):
    """Requests are created by PIs through services; here they are decided, by the list
    actions or the Decide page, never edited."""

    cluster_lookup = "allocation__cluster"
    list_display = (
        "allocation",
        "cluster",
        "kind",
        "su_delta",
        "requested_status",
        "requested_end",
        "priority",
        "state",
        "requester",
        "created",
        "decide_link",
    )
    list_select_related = ("allocation__cluster", "requester")
    list_filter = ("state", "kind", "priority", "allocation__cluster")
    search_fields = (
        "allocation__name",
        "allocation__project__title",
        "requester__username",
        "justification",
    )
    autocomplete_fields = ("allocation", "requester", "decided_by")
    date_hierarchy = "created"
    inlines = (ChangeRequestEventInline,)
    actions = ("approve", "reject")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_decide_permission(self, request, obj=None):
        # Who may decide which request is the service's call (cluster admins); this only
        # gates the admin pages, by the model's ordinary change permission.
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    @admin.display(description="Cluster", ordering="allocation__cluster__name")
    def cluster(self, change_request: ChangeRequest) -> str:
        return change_request.allocation.cluster.name

    @admin.display(description="")
    def decide_link(self, change_request: ChangeRequest) -> str:
        if not change_request.is_pending:
            return ""
        url = reverse("admin:allocations_changerequest_decide", args=[change_request.pk])
        return format_html('<a href="{}">Decide</a>', url)

    def get_urls(self):
        decide = path(
            "<path:object_id>/decide/",
            self.admin_site.admin_view(self.decide_view),
            name="allocations_changerequest_decide",
        )
        return [decide, *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "can_decide": self.has_decide_permission(request)}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.action(description="Approve selected requests as requested", permissions=["decide"])
    def approve(self, request, queryset):
        apply_each(
            self,
            request,
            queryset.select_related("allocation__cluster").order_by("-priority", "created"),
            lambda change_request: services.change_request_approve(
                actor=request.user, request=change_request
            ),
            done="Approved",
        )

    @admin.action(description="Reject selected requests", permissions=["decide"])
    def reject(self, request, queryset):
        queryset = queryset.select_related("allocation__cluster")
        return _with_reason(
            self,
            request,
            queryset,
            action="reject",
            title="Reject change requests",
            apply=lambda reason: apply_each(
                self,
                request,
                queryset,
                lambda change_request: services.change_request_reject(
                    actor=request.user, request=change_request, reason=reason
                ),
                done="Rejected",
            ),
        )

    def decide_view(self, request, object_id):
        change_request = self.get_object(request, unquote(object_id))
        if change_request is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_decide_permission(request, change_request):
            raise PermissionDenied
        form = DecideForm(request.POST if request.method == "POST" else None)
        if form.is_valid():
            try:
                done = self._decide(request, change_request, form.cleaned_data)
            except (ValidationError, PermissionDenied) as refusal:
                show_refusal(form, refusal, rename=form.service_fields)
            else:
                self.message_user(request, f"{change_request}: {done}.", messages.SUCCESS)
                return HttpResponseRedirect(
                    reverse("admin:allocations_changerequest_change", args=[change_request.pk])
                )
        allocation = change_request.allocation
        context = {
            **self.admin_site.each_context(request),
            "title": "Decide a change request",
            "subtitle": str(change_request),
            "opts": self.opts,
            "original": change_request,
            "allocation": allocation,
            "events": change_request.events.select_related("actor"),
            "form": form,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/allocations/changerequest/decide.html", context)

    @staticmethod
    def _decide(request, change_request: ChangeRequest, data: dict) -> str:
        actor, reason = request.user, data["reason"]
        if data["decision"] == DecideForm.APPROVE:
            services.change_request_approve(
                actor=actor, request=change_request, su_approved=data["su_approved"], reason=reason
            )
            return "approved"
        if data["decision"] == DecideForm.REJECT:
            services.change_request_reject(actor=actor, request=change_request, reason=reason)
            return "rejected"
        services.change_request_comment(actor=actor, request=change_request, text=reason)
        return "comment added"


@admin.register(ChangeRequestEvent)
class ChangeRequestEventAdmin(ReadOnlyAdmin):
    cluster_lookup = "request__allocation__cluster"
    list_display = ("request", "kind", "actor", "text", "created")
    list_select_related = ("request__allocation", "actor")
    list_filter = ("kind",)
    search_fields = ("request__allocation__name", "actor__username", "text")
    autocomplete_fields = ("request", "actor")
    date_hierarchy = "created"


@admin.register(AllocationChange)
class AllocationChangeAdmin(ReadOnlyAdmin):
    cluster_lookup = "allocation__cluster"
    list_display = (
        "allocation",
        "kind",
        "su_delta",
        "su_budget",
        "status",
        "end",
        "actor",
        "change_request_id",
        "created",
    )
    list_select_related = ("allocation__cluster", "actor")
    list_filter = ("kind", "allocation__cluster")
    search_fields = ("allocation__name", "allocation__project__title", "reason")
    autocomplete_fields = ("allocation", "change_request", "actor")
    date_hierarchy = "created"


# --- members ---------------------------------------------------------------------------


@admin.register(Membership)
class MembershipAdmin(ServiceSaveAdmin):
    cluster_lookup = "allocation__cluster"
    form = MembershipChangeForm
    add_form = MembershipAddForm
    list_display = ("user", "allocation", "status", "su_cap", "su_used", "su_held", "start", "end")
    list_select_related = ("user", "allocation__cluster")
    list_filter = ("status", "allocation__cluster")
    search_fields = ("user__username", "user__last_name", "allocation__name")
    autocomplete_fields = ("allocation", "user")
    actions = ("freeze", "reactivate")
    add_fieldsets = (
        (None, {"fields": ("allocation", "user", "su_cap", "start", "end", "reason")}),
    )
    fieldsets = (
        (None, {"fields": ("allocation", "user", "status", "start", "end")}),
        ("Balance", {"fields": ("su_used", "su_held")}),
        ("Cap", {"fields": ("su_cap", "reason")}),
        (None, {"fields": ("code", "created")}),
    )

    def get_readonly_fields(self, request, obj=None):
        maintained = ("su_used", "su_held")
        if obj is None:
            return maintained
        return ("allocation", "user", "status", "start", "end", *maintained, "code", "created")

    def save_with_service(self, request, obj, form, change):
        data = form.cleaned_data
        if not change:
            return services.membership_add(
                actor=request.user,
                allocation=data["allocation"],
                user=data["user"],
                su_cap=data["su_cap"],
                start=data["start"],
                end=data["end"],
                reason=data["reason"],
            )
        if "su_cap" in form.changed_data:
            return services.membership_set_cap(
                actor=request.user, membership=obj, su_cap=data["su_cap"], reason=data["reason"]
            )
        return None

    def _set_status(self, request, queryset, action: str, status: str, title: str):
        queryset = queryset.select_related("user", "allocation__project", "allocation__cluster")
        return _status_action(
            self,
            request,
            queryset,
            action=action,
            status=status,
            title=title,
            write=lambda membership, reason: services.membership_set_status(
                actor=request.user, membership=membership, status=status, reason=reason
            ),
        )

    @admin.action(description="Freeze (set INACTIVE)")
    def freeze(self, request, queryset):
        return self._set_status(request, queryset, "freeze", Status.INACTIVE, "Freeze memberships")

    @admin.action(description="Reactivate")
    def reactivate(self, request, queryset):
        return self._set_status(
            request, queryset, "reactivate", Status.ACTIVE, "Reactivate memberships"
        )


@admin.register(MembershipChange)
class MembershipChangeAdmin(ReadOnlyAdmin):
    cluster_lookup = "membership__allocation__cluster"
    list_display = ("membership", "kind", "su_cap", "status", "actor", "reason", "created")
    list_select_related = ("membership__user", "membership__allocation", "actor")
    list_filter = ("kind", "status")
    search_fields = ("membership__user__username", "membership__allocation__name", "reason")
    autocomplete_fields = ("membership", "actor")
    date_hierarchy = "created"


# --- usage -------------------------------------------------------------------------------


@admin.register(Usage)
class UsageAdmin(ReadOnlyAdmin):
    cluster_lookup = "allocation__cluster"
    list_display = (
        "job_id",
        "user",
        "allocation",
        "resource",
        "raw_unit_seconds",
        "su_amount",
        "charged_at",
        "recorded_at",
    )
    list_select_related = ("user", "allocation__cluster", "resource__cluster")
    list_filter = ("cluster", "charged_at")
    # Exact matches only: a LIKE over millions of rows would scan the table.
    search_fields = ("=job_id", "=user__username", "=allocation__name")
    autocomplete_fields = ("cluster", "allocation", "user", "resource", "rate")
    # Millions of rows: no second, unfiltered COUNT(*) per page, and newest first by the
    # primary key (there is no index leading with charged_at to sort by). No
    # date_hierarchy either: its MIN/MAX and DISTINCT-date queries would scan the table.
    show_full_result_count = False
    ordering = ("-id",)


@admin.register(UsageAdjustment)
class UsageAdjustmentAdmin(ReadOnlyAdmin):
    cluster_lookup = "allocation__cluster"
    list_display = ("usage", "allocation", "user", "kind", "su_delta", "actor", "created")
    list_select_related = ("usage", "allocation__cluster", "user", "actor")
    list_filter = ("kind",)
    search_fields = ("=usage__job_id", "=user__username", "=allocation__name")
    autocomplete_fields = ("usage", "allocation", "user", "rate", "actor")
    date_hierarchy = "created"


@admin.register(Hold)
class HoldAdmin(ReadOnlyAdmin):
    cluster_lookup = "cluster"
    list_display = (
        "job_id",
        "user",
        "allocation",
        "resource",
        "su_amount",
        "state",
        "created",
        "expires_at",
        "closed_at",
    )
    list_select_related = ("user", "allocation__cluster", "resource__cluster")
    list_filter = ("state", "cluster")
    search_fields = ("=job_id", "=user__username", "=allocation__name")
    autocomplete_fields = ("cluster", "allocation", "user", "resource", "actor")
    date_hierarchy = "created"


# --- background usage imports --------------------------------------------------------------


@admin.register(UsageImport)
class UsageImportAdmin(NoDeleteAdmin):
    """Uploaded accounting files and their progress. The add page is the upload form; an
    import is never edited, only resumed. A cluster admin sees the imports of their
    clusters (the same rule as the API)."""

    cluster_lookup = "cluster"
    list_display = (
        "original_name",
        "cluster",
        "format",
        "state",
        "progress",
        "jobs_charged",
        "rejected_lines",
        "su_charged",
        "starter",
        "created",
    )
    list_filter = ("state", "format", "cluster")
    search_fields = ("original_name", "=code")
    date_hierarchy = "created"
    change_form_template = "admin/allocations/usageimport/change_form.html"
    fieldsets = (
        (None, {"fields": ("cluster", "format", "tz", "original_name", "size", "starter")}),
        ("Progress", {"fields": ("state", "progress", "error", "attempts")}),
        (
            "Counts",
            {
                "fields": (
                    "jobs_charged",
                    "usage_created",
                    "duplicates",
                    "corrected",
                    "skipped",
                    "rejected_lines",
                    "uncharged_jobs",
                    "su_charged",
                )
            },
        ),
        (None, {"fields": ("code", "created", "started_at", "heartbeat_at", "finished_at")}),
    )

    def get_queryset(self, request):
        return usage_import_list_for(user=request.user)

    def get_readonly_fields(self, request, obj=None):
        return [name for _, options in self.fieldsets for name in options["fields"]]

    def has_change_permission(self, request, obj=None):
        return False

    def has_resume_permission(self, request, obj=None):
        return request.user.has_perm("allocations.add_usageimport")

    @admin.display(description="Started by")
    def starter(self, usage_import: UsageImport) -> str:
        return usage_import.started_by

    @admin.display(description="Progress")
    def progress(self, usage_import: UsageImport) -> str:
        p = usage_import_progress(usage_import)
        text = f"{p.percent}% ({p.rows_done:,} of {p.rows_total:,} rows"
        if p.rows_per_second is not None:
            text += f", {p.rows_per_second} rows/s"
        if p.eta_seconds is not None:
            text += f", about {p.eta_seconds:,} s left"
        return text + ")"

    def get_urls(self):
        def view(suffix, func):
            return path(
                f"<path:object_id>/{suffix}/",
                self.admin_site.admin_view(func),
                name=f"allocations_usageimport_{suffix}",
            )

        custom = [view("rejects", self.rejects_view), view("resume", self.resume_view)]
        return [*custom, *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        usage_import = self.get_object(request, unquote(object_id))
        resumable = (
            usage_import is not None
            and self.has_resume_permission(request)
            and (usage_import.state == UsageImport.State.FAILED or is_stale(usage_import))
        )
        extra_context = {**(extra_context or {}), "resumable": resumable}
        return super().change_view(request, object_id, form_url, extra_context)

    def add_view(self, request, form_url="", extra_context=None):
        """The "Import usage" page: the upload form."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = UsageImportForm(request.POST or None, request.FILES or None, user=request.user)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                usage_import = usage_import_create(
                    actor=request.user,
                    cluster=data["cluster"],
                    fmt=data["format"],
                    tz=data["tz"],
                    upload=data["file"],
                )
            except (ValidationError, PermissionDenied) as refusal:
                show_refusal(form, refusal)
            else:
                self.message_user(
                    request, f"{usage_import.original_name}: queued for import.", messages.SUCCESS
                )
                return HttpResponseRedirect(
                    reverse("admin:allocations_usageimport_change", args=[usage_import.pk])
                )
        context = {
            **self.admin_site.each_context(request),
            "title": "Import usage",
            "opts": self.opts,
            "form": form,
        }
        return TemplateResponse(request, "admin/allocations/usageimport/upload.html", context)

    def rejects_view(self, request, object_id):
        usage_import = self.get_object(request, unquote(object_id))
        if usage_import is None or not self.has_view_permission(request, usage_import):
            raise Http404
        response = StreamingHttpResponse(
            usage_import_rejects_csv(usage_import), content_type="text/csv; charset=utf-8"
        )
        name = f"rejects-{usage_import.code}.csv"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response

    def resume_view(self, request, object_id):
        usage_import = self.get_object(request, unquote(object_id))
        if usage_import is None:
            raise Http404
        if request.method != "POST" or not self.has_resume_permission(request, usage_import):
            raise PermissionDenied
        try:
            usage_import_resume(usage_import=usage_import, actor=request.user)
        except (ValidationError, PermissionDenied) as refusal:
            self.message_user(request, _refusal_text(refusal), messages.ERROR)
        else:
            self.message_user(request, f"{usage_import.original_name}: resumed.", messages.SUCCESS)
        return HttpResponseRedirect(
            reverse("admin:allocations_usageimport_change", args=[usage_import.pk])
        )
