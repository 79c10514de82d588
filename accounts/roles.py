"""The Django model permissions a cluster admin needs in the admin site.

Being in Cluster.admins is what lets a person act on a cluster (the services check
it); these permissions only open the admin's pages, which then show rows of that
person's clusters alone (NoDeleteAdmin.get_queryset). The group is kept in step with
this list after every migrate."""

from django.contrib.auth.models import Group, Permission
from django.db.models import Q

CLUSTER_ADMINS_GROUP = "Cluster admins"

# app label -> model -> actions beyond "view" (which every model listed gets).
CLUSTER_ADMIN_PERMISSIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "accounts": {
        "organization": (),
        "user": (),
        "apitoken": ("add", "change"),
    },
    "allocations": {
        "project": ("change",),
        "projectchange": (),
        "cluster": ("change",),
        "resource": ("add", "change"),
        "tresmapping": ("add", "change"),
        "rate": ("add", "change"),
        "ratecorrection": (),
        "allocation": ("add", "change"),
        "changerequest": ("change",),
        "changerequestevent": (),
        "allocationchange": (),
        "membership": ("add", "change"),
        "membershipchange": (),
        "usage": (),
        "usageadjustment": (),
        "hold": (),
        "usageimport": ("add",),
        "syncreport": (),
    },
}


def cluster_admin_permissions():
    wanted = Q(pk__in=[])
    for app, models in CLUSTER_ADMIN_PERMISSIONS.items():
        for model, actions in models.items():
            codenames = [f"{action}_{model}" for action in ("view", *actions)]
            wanted |= Q(
                content_type__app_label=app,
                content_type__model=model,
                codename__in=codenames,
            )
    return Permission.objects.filter(wanted)


def cluster_admins_group() -> Group:
    group, _ = Group.objects.get_or_create(name=CLUSTER_ADMINS_GROUP)
    group.permissions.set(cluster_admin_permissions())
    return group


def sync_after_migrate(sender, **kwargs) -> None:
    cluster_admins_group()
