"""The permission matrix as data: for every route, what each role gets on an object
inside its scope (MINE) and outside it (THEIRS). docs/permissions.md is the same table
for people; test_permission_matrix.py walks the URL map and fails on any route that is
not listed here, so a new page or endpoint cannot ship without its row.

An expectation is "<status>" or "<status> <check>", where check is
  sees:mine / sees:both / sees:none  (a list: whose public ids the answer contains)
  to:login / to:admin                (a redirect: to the sign-in page, or the admin's
                                      index, which is how the admin says "not found")
A value may be one string for both scopes, or {MINE: ..., THEIRS: ...}.
"""

from dataclasses import dataclass, field

from tests.security.world import (
    ANONYMOUS,
    CLUSTER_ADMIN,
    IMPORTER,
    MANAGER,
    MEMBER,
    MINE,
    OUTSIDER,
    PI,
    STAFF,
    THEIRS,
)

ALL = (ANONYMOUS, STAFF, CLUSTER_ADMIN, PI, MANAGER, MEMBER, OUTSIDER, IMPORTER)
PEOPLE_IN_PROJECT = (PI, MANAGER, MEMBER)


def split(mine: str, theirs: str) -> dict:
    return {MINE: mine, THEIRS: theirs}


def roles(default: str, **overrides) -> dict:
    return {role: overrides.get(role, default) for role in ALL}


@dataclass
class Call:
    """One request: `path(world, scope)` gives the URL, `body(world, scope)` the JSON."""

    method: str
    path: object
    expect: dict
    body: object = None
    list_ids: object = None  # (world, scope) -> public id to look for in a list


# --- the API ---------------------------------------------------------------------------

_detail = roles(
    split("200", "404"),
    anonymous="401",
    staff="200",
    outsider="404",
)
_cluster_write = roles(
    "403",
    anonymous="401",
    staff="{ok}",
    cluster_admin=split("{ok}", "403"),
    importer=split("{ok}", "403"),
)


def _ok(table: dict, ok: str) -> dict:
    def fill(value):
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value.replace("{ok}", ok)

    return {role: fill(value) for role, value in table.items()}


API = {
    "api-root": [Call("GET", lambda w, s: "/api/v1/", roles("200", anonymous="401"))],
    "api-schema": [Call("GET", lambda w, s: "/api/v1/schema/", roles("200", anonymous="401"))],
    "api-ping": [Call("GET", lambda w, s: "/api/v1/ping/", roles("200", anonymous="401"))],
    "allocation-list": [
        Call(
            "GET",
            lambda w, s: "/api/v1/allocations/",
            roles(
                "200 sees:mine",
                anonymous="401",
                staff="200 sees:both",
                outsider="200 sees:none",
            ),
            list_ids=lambda w, s: w.side(s).allocation.code,
        )
    ],
    "allocation-detail": [
        Call("GET", lambda w, s: f"/api/v1/allocations/{w.side(s).allocation.code}/", _detail)
    ],
    "allocation-balance": [
        Call(
            "GET",
            lambda w, s: f"/api/v1/allocations/{w.side(s).allocation.code}/balance/",
            _detail,
        ),
        # Another member's balance: the PI's, asked for by name.
        Call(
            "GET",
            lambda w, s: (
                f"/api/v1/allocations/{w.side(s).allocation.code}/balance/"
                f"?user={w.side(s).allocation.project.pi.username}"
            ),
            {**_detail, MEMBER: split("403", "404")},
        ),
    ],
    "admission-list": [
        Call(
            "POST",
            lambda w, s: "/api/v1/admission/",
            _ok(_cluster_write, "200"),
            body=lambda w, s: w.side(s).hold_body(),
        )
    ],
    "hold-list": [
        Call(
            "GET",
            lambda w, s: "/api/v1/holds/",
            roles(
                "200 sees:none",
                anonymous="401",
                staff="200 sees:both",
                cluster_admin="200 sees:mine",
                importer="200 sees:mine",
            ),
            list_ids=lambda w, s: w.side(s).hold.code,
        ),
        Call(
            "POST",
            lambda w, s: "/api/v1/holds/",
            _ok(_cluster_write, "201"),
            body=lambda w, s: w.side(s).hold_body(job_id=w.side(s).new_job_id()),
        ),
    ],
    "hold-detail": [
        Call(
            "GET",
            lambda w, s: f"/api/v1/holds/{w.side(s).hold.code}/",
            roles(
                "404",
                anonymous="401",
                staff="200",
                cluster_admin=split("200", "404"),
                importer=split("200", "404"),
            ),
        ),
        Call(
            "DELETE",
            lambda w, s: f"/api/v1/holds/{w.side(s).fresh_hold().code}/",
            roles(
                "404",
                anonymous="401",
                staff="200",
                cluster_admin=split("200", "404"),
                importer=split("200", "404"),
            ),
        ),
    ],
    "refund-list": [
        Call(
            "POST",
            lambda w, s: "/api/v1/refunds/",
            # An importer never refunds, even on its own cluster.
            {**_ok(_cluster_write, "201"), IMPORTER: "403"},
            body=lambda w, s: {
                "cluster": w.side(s).cluster.name,
                "job_id": w.side(s).fresh_job(),
                "reason": "Node failure",
            },
        )
    ],
    "usage-list": [
        Call(
            "POST",
            lambda w, s: "/api/v1/usage/",
            _ok(_cluster_write, "200"),
            body=lambda w, s: w.side(s).usage_body(),
        )
    ],
}

# --- pages outside the admin -------------------------------------------------------------

_admin_page = roles("302 to:login", staff="200", cluster_admin="200")

PAGES = {
    # The benchmarks' reference page: the layout for anyone signed in; a token is not a
    # session, so the importer is sent to sign in like anyone else (to /accounts/login/,
    # which to:login, the admin's sign-in page, does not name).
    "ping": [Call("GET", lambda w, s: "/ping/", roles("200", anonymous="302", importer="302"))],
    "allocations:home": [Call("GET", lambda w, s: "/", roles("302 to:admin"))],
    "oidc_authentication_init": [
        # Institutional sign-in is off in these settings (tests/accounts/test_oidc.py
        # covers it on); the route exists on every site and answers 404.
        Call("GET", lambda w, s: "/oidc/authenticate/", roles("404"))
    ],
    "oidc_authentication_callback": [
        Call("GET", lambda w, s: "/oidc/callback/?code=x&state=y", roles("404"))
    ],
    "admin:index": [Call("GET", lambda w, s: "/admin/", _admin_page)],
    "admin:login": [
        # Signed-in staff are sent on to the index; anyone else gets the form.
        Call("GET", lambda w, s: "/admin/login/", roles("200", staff="302", cluster_admin="302"))
    ],
    "admin:logout": [
        # Signing out is a POST (with the CSRF token); it always ends on the home page.
        Call(
            "GET",
            lambda w, s: "/admin/logout/",
            roles("302 to:admin", staff="405", cluster_admin="405"),
        ),
        Call("POST", lambda w, s: "/admin/logout/", roles("302")),
    ],
    "admin:password_change": [Call("GET", lambda w, s: "/admin/password_change/", _admin_page)],
    "admin:password_change_done": [
        Call("GET", lambda w, s: "/admin/password_change/done/", _admin_page)
    ],
    "admin:jsi18n": [Call("GET", lambda w, s: "/admin/jsi18n/", _admin_page)],
    "admin:app_list": [
        Call("GET", lambda w, s: "/admin/allocations/", _admin_page),
        # A cluster admin holds no permission in django-axes: that app does not exist
        # for them.
        Call(
            "GET",
            lambda w, s: "/admin/axes/",
            roles("302 to:login", staff="200", cluster_admin="404"),
        ),
    ],
    "admin:autocomplete": [
        # Choosing an allocation for a membership offers only the admin's own clusters'.
        Call(
            "GET",
            lambda w, s: (
                "/admin/autocomplete/?app_label=allocations&model_name=membership"
                "&field_name=allocation&term="
            ),
            roles("302 to:login", staff="200 sees:both", cluster_admin="200 sees:mine"),
            list_ids=lambda w, s: f'"{w.side(s).allocation.pk}"',
        )
    ],
    "admin:view_on_site": [
        # No model has a page outside the admin yet, so there is nowhere to go.
        Call(
            "GET",
            lambda w, s: f"/admin/r/{_ct(w.side(s).allocation)}/{w.side(s).allocation.pk}/",
            roles("302 to:login", staff="404", cluster_admin="404"),
        )
    ],
    "admin:auth_user_password_change": [
        # Setting someone's password is a change: a cluster admin only views people.
        Call(
            "GET",
            lambda w, s: f"/admin/accounts/user/{w.side(s).member.pk}/password/",
            roles("302 to:login", staff="200", cluster_admin="403"),
        )
    ],
    # Django's catch-all for unknown admin URLs: 404 for staff, the sign-in page for
    # anyone else (so it tells strangers nothing).
    "admin/(?P<url>.*)$": [
        Call(
            "GET",
            lambda w, s: "/admin/no-such-page/",
            roles("302 to:login", staff="404", cluster_admin="404"),
        )
    ],
}


def _ct(obj) -> int:
    from django.contrib.contenttypes.models import ContentType

    return ContentType.objects.get_for_model(obj).pk


# --- the Django admin, per model -----------------------------------------------------------


@dataclass
class AdminModel:
    """What staff (superuser) and cluster admins may do with a model in the admin:
    letters v(iew), a(dd), c(hange), d(elete). `scoped`: a cluster admin sees only rows
    of their own clusters (NoDeleteAdmin.cluster_lookup). Only site admins delete, and
    only groups and sign-in throttle records (deleting those unlocks an account).
    Everyone else (signed in or not, importer tokens included) is sent to the sign-in
    page."""

    staff: str
    cluster_admin: str
    scoped: bool = True
    extra: dict = field(default_factory=dict)  # custom admin views: name -> table


_CA_READ = "v"
ADMIN = {
    "allocations.project": AdminModel("vac", "vc"),
    "allocations.projectchange": AdminModel("v", _CA_READ),
    "allocations.cluster": AdminModel("vac", "vc"),
    "allocations.resource": AdminModel("vac", "vac"),
    "allocations.tresmapping": AdminModel("vac", "vac"),
    "allocations.rate": AdminModel("vac", "vac"),
    "allocations.ratecorrection": AdminModel("v", _CA_READ),
    "allocations.allocation": AdminModel("vac", "vac"),
    "allocations.changerequest": AdminModel(
        "v",
        "v",
        extra={
            "decide": roles(
                "302 to:login",
                staff="200",
                cluster_admin=split("200", "302 to:admin"),
            )
        },
    ),
    "allocations.changerequestevent": AdminModel("v", _CA_READ),
    "allocations.allocationchange": AdminModel("v", _CA_READ),
    "allocations.membership": AdminModel("vac", "vac"),
    "allocations.membershipchange": AdminModel("v", _CA_READ),
    "allocations.usage": AdminModel("v", _CA_READ),
    "allocations.usageadjustment": AdminModel("v", _CA_READ),
    "allocations.hold": AdminModel("v", _CA_READ),
    # People and institutions are not per cluster: a cluster admin picks members from
    # everyone, but cannot change anyone (nor anyone's roles).
    "accounts.organization": AdminModel("vac", "v", scoped=False),
    "accounts.user": AdminModel("vac", "v", scoped=False),
    "accounts.apitoken": AdminModel("va", "va"),
    # The audit log and the sign-in throttle's records are for site admins only.
    "accounts.auditevent": AdminModel("v", "", scoped=False),
    "auth.group": AdminModel("vacd", "", scoped=False),
    "axes.accessattempt": AdminModel("vd", "", scoped=False),
    "axes.accesslog": AdminModel("vd", "", scoped=False),
    "axes.accessfailurelog": AdminModel("vd", "", scoped=False),
}


def admin_expectation(entry: AdminModel, view: str, role: str, scope: str) -> str:
    """The status of a standard admin view, from the model's row."""
    if role not in (STAFF, CLUSTER_ADMIN):
        return "302 to:login"
    may = entry.staff if role == STAFF else entry.cluster_admin
    visible = role == STAFF or not entry.scoped or scope == MINE
    if view == "changelist":
        return "200" if "v" in may else "403"
    if view == "add":
        return "200" if "a" in may else "403"
    if view == "delete":
        if "d" not in may:
            return "403"
        return "200" if visible else "302 to:admin"
    if view == "change":
        # The admin checks the permission before it looks the row up.
        if "v" not in may:
            return "403"
        return "200" if visible else "302 to:admin"
    if view == "history":
        # ... and here the other way round.
        if not visible:
            return "302 to:admin"
        return "200" if "v" in may else "403"
    raise KeyError(view)


STANDARD_ADMIN_VIEWS = ("changelist", "add", "change", "history", "delete")
