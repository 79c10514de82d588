from django.contrib import admin
from django.contrib.auth import admin as auth_admin
from django.contrib.auth import forms as auth_forms
from django.template.response import TemplateResponse

from accounts.models import ApiToken, AuditEvent, Organization, User
from accounts.tokens import api_token_issue, api_token_revoke
from allocations.admin import ServiceSaveAdmin, apply_each


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ("name", "originated_id", "created")
    list_filter = ("created",)
    search_fields = ("name", "originated_id")
    readonly_fields = ("code", "created")

    def has_delete_permission(self, request, obj=None):
        return False  # people and their history point at it; nothing is deleted


# Django's user forms name django.contrib.auth's own User model.
class UserCreationForm(auth_forms.AdminUserCreationForm):
    class Meta(auth_forms.AdminUserCreationForm.Meta):
        model = User
        fields = ("username", "email")


class UserChangeForm(auth_forms.UserChangeForm):
    class Meta(auth_forms.UserChangeForm.Meta):
        model = User


@admin.register(User)
class UserAdmin(auth_admin.UserAdmin):
    form = UserChangeForm
    add_form = UserCreationForm
    fieldsets = (
        *auth_admin.UserAdmin.fieldsets,
        ("Institution", {"fields": ("organization", "originated_id", "code")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": (
                    "username",
                    "email",
                    "first_name",
                    "last_name",
                    "organization",
                    "originated_id",
                    "usable_password",
                    "password1",
                    "password2",
                ),
            },
        ),
    )
    readonly_fields = ("code", "last_login", "date_joined")
    # Roles and permissions are site admins' to give: staff allowed to edit users must
    # not be able to make themselves (or anyone) superuser.
    ROLE_FIELDS = ("is_superuser", "is_staff", "groups", "user_permissions")
    list_display = (
        "username",
        "email",
        "first_name",
        "last_name",
        "organization",
        "is_staff",
        "is_active",
    )
    list_select_related = ("organization",)
    list_filter = (*auth_admin.UserAdmin.list_filter, "organization")
    search_fields = (*auth_admin.UserAdmin.search_fields, "originated_id", "organization__name")
    autocomplete_fields = ("organization",)

    def has_delete_permission(self, request, obj=None):
        return False  # usage, diffs and decisions name their user; deactivate instead

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        if request.user.is_superuser:
            return fields
        return (*fields, *self.ROLE_FIELDS)


@admin.register(ApiToken)
class ApiTokenAdmin(ServiceSaveAdmin):
    """Importer tokens are issued and revoked, never edited; the secret is shown once,
    on the page that answers the add form, and stored nowhere (not even in a message)."""

    list_display = (
        "name",
        "cluster",
        "prefix",
        "created_by",
        "created",
        "last_used_at",
        "revoked_at",
    )
    cluster_lookup = "cluster"
    list_select_related = ("cluster", "created_by")
    list_filter = ("cluster", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "=prefix", "cluster__name")
    autocomplete_fields = ("cluster",)
    fields = ("cluster", "name")
    actions = ("revoke",)

    def has_change_permission(self, request, obj=None):
        return False

    def has_revoke_permission(self, request, obj=None):
        return request.user.has_perm("accounts.change_apitoken")

    def get_fields(self, request, obj=None):
        if obj is None:
            return self.fields
        return (
            *self.fields,
            "prefix",
            "created_by",
            "created",
            "last_used_at",
            "revoked_at",
            "revoked_by",
        )

    def save_with_service(self, request, obj, form, change):
        data = form.cleaned_data
        issued = api_token_issue(actor=request.user, cluster=data["cluster"], name=data["name"])
        issued.token.secret = issued.secret  # for response_add only
        return issued.token

    def response_add(self, request, obj, post_url_continue=None):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Token issued",
            "token": obj,
            "secret": obj.secret,
        }
        return TemplateResponse(request, "admin/accounts/apitoken/issued.html", context)

    @admin.action(description="Revoke selected tokens", permissions=["revoke"])
    def revoke(self, request, queryset):
        apply_each(
            self,
            request,
            queryset.select_related("cluster").filter(revoked_at__isnull=True),
            lambda token: api_token_revoke(actor=request.user, token=token),
            done="Revoked",
        )


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit log, for site admins only: read, filtered and searched, never edited
    (the model and, on PostgreSQL, a trigger refuse changes too)."""

    list_display = ("when", "actor_label", "action", "target_type", "target_label", "ip")
    list_filter = ("action", "target_type", ("when", admin.DateFieldListFilter))
    search_fields = ("actor_label", "target_label", "=target_code", "=ip")
    date_hierarchy = "when"
    fields = (
        "when",
        "action",
        "actor",
        "actor_label",
        "target_type",
        "target_code",
        "target_label",
        "ip",
        "details",
    )
    readonly_fields = fields
    list_select_related = ("actor",)
    actions = None

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
