"""The permission matrix as data: for every route, what each role gets on an object
inside its scope (MINE) and outside it (THEIRS). docs/permissions.md is the same table
for people; test_permission_matrix.py walks the URL map and fails on any route that is
not listed here, so a new page or endpoint cannot ship without its row.

An expectation is "<status>" or "<status> <check>", where check is
  sees:mine / sees:both / sees:none  (a list: whose public ids the answer contains)
  to:login / to:admin                (a redirect: to the admin's sign-in page, or the
                                      admin's index, which is how the admin says "not
                                      found")
  to:signin                          (a redirect to the portal's sign-in page,
                                      /accounts/login/)
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
    format: str = "json"  # "multipart" for browser forms and file uploads


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


# Imports: the cluster's token and admins see their cluster's, staff all; the rest of the
# world finds none (404).
_import = roles(
    "404",
    anonymous="401",
    staff="200",
    cluster_admin=split("200", "404"),
    importer=split("200", "404"),
)
# Cluster charts: the cluster's admins and staff; a token is refused.
_cluster_chart_table = roles("403", anonymous="401", staff="200", cluster_admin=split("200", "403"))


def _chart(w, s) -> str:
    return f"/api/v1/allocations/{w.side(s).allocation.code}/"


def _cluster_chart(w, s) -> str:
    return f"/api/v1/clusters/{w.side(s).cluster.name}/charts/"


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
    # --- background imports: the cluster's token and admins, staff ---
    "usageimport-list": [
        Call(
            "GET",
            lambda w, s: "/api/v1/imports/",
            roles(
                "200 sees:none",
                anonymous="401",
                staff="200 sees:both",
                cluster_admin="200 sees:mine",
                importer="200 sees:mine",
            ),
            list_ids=lambda w, s: w.side(s).usage_import.code,
        ),
        Call(
            "POST",
            lambda w, s: "/api/v1/imports/",
            _ok(_cluster_write, "202"),
            body=lambda w, s: w.side(s).import_body(),
            format="multipart",
        ),
    ],
    "usageimport-detail": [
        Call("GET", lambda w, s: f"/api/v1/imports/{w.side(s).usage_import.code}/", _import)
    ],
    "usageimport-rejects": [
        Call(
            "GET",
            lambda w, s: f"/api/v1/imports/{w.side(s).usage_import.code}/rejects/",
            _import,
        )
    ],
    "usageimport-resume": [
        Call(
            "POST",
            lambda w, s: f"/api/v1/imports/{w.side(s).fresh_import().code}/resume/",
            roles(
                "404",
                anonymous="401",
                staff="202",
                cluster_admin=split("202", "404"),
                importer=split("202", "404"),
            ),
            body=lambda w, s: {},
        )
    ],
    # --- Slurm sync: the cluster's token and admins, staff; a name is not a secret ---
    "cluster-desired-state": [
        Call(
            "GET",
            lambda w, s: f"/api/v1/clusters/{w.side(s).cluster.name}/desired-state/",
            _ok(_cluster_write, "200"),
        )
    ],
    "cluster-sync-reports": [
        Call(
            "GET",
            lambda w, s: f"/api/v1/clusters/{w.side(s).cluster.name}/sync-reports/",
            _ok(_cluster_write, "200"),
        ),
        # Only the sync client posts a report: the importer token, never a person.
        Call(
            "POST",
            lambda w, s: f"/api/v1/clusters/{w.side(s).cluster.name}/sync-reports/",
            roles("403", anonymous="401", importer=split("201", "403")),
            body=lambda w, s: w.side(s).sync_report_body(),
        ),
    ],
    # --- charts: whoever sees the allocation (the allocation API's scope) ---
    "allocation-chart-burndown": [
        Call("GET", lambda w, s: f"{_chart(w, s)}charts/burndown/", _detail)
    ],
    "allocation-chart-members": [
        Call("GET", lambda w, s: f"{_chart(w, s)}charts/members/", _detail)
    ],
    "allocation-chart-resources": [
        Call("GET", lambda w, s: f"{_chart(w, s)}charts/resources/", _detail)
    ],
    "allocation-chart-forecast": [Call("GET", lambda w, s: f"{_chart(w, s)}forecast/", _detail)],
    "allocation-chart-alert-thresholds": [
        Call("GET", lambda w, s: f"{_chart(w, s)}alert-thresholds/", _detail),
        # Changing them: the PI, managers and cluster admins; a member or a token never.
        Call(
            "PUT",
            lambda w, s: f"{_chart(w, s)}alert-thresholds/",
            {**_detail, MEMBER: split("403", "404"), IMPORTER: split("403", "404")},
            body=lambda w, s: {"alert_thresholds": "50,80,100"},
        ),
    ],
    "project-chart-overview": [
        Call(
            "GET",
            lambda w, s: f"/api/v1/projects/{w.side(s).project.code}/charts/overview/",
            # The projects the user leads, manages or is a member of (project_list_for): a
            # cluster admin's view of a project is the review pages; a token has none.
            roles(
                split("200", "404"),
                anonymous="401",
                staff="200",
                cluster_admin="404",
                outsider="404",
                importer="404",
            ),
        )
    ],
    "cluster-chart-commitment": [
        Call("GET", lambda w, s: f"{_cluster_chart(w, s)}commitment/", _cluster_chart_table)
    ],
    "cluster-chart-usage": [
        Call("GET", lambda w, s: f"{_cluster_chart(w, s)}usage/", _cluster_chart_table)
    ],
    "cluster-chart-decisions": [
        Call("GET", lambda w, s: f"{_cluster_chart(w, s)}decisions/", _cluster_chart_table)
    ],
}

# --- pages outside the admin -------------------------------------------------------------

_admin_page = roles("302 to:login", staff="200", cluster_admin="200")


def _portal(default: str, **overrides) -> dict:
    """A portal page: anonymous and importer tokens (not a session) go to sign in."""
    return roles(default, anonymous="302 to:signin", importer="302 to:signin", **overrides)


# One allocation's pages: its project's PI and managers, its cluster's admins, its
# members; 404 to anyone else.
_sees = _portal(
    split("200", "404"),
    staff="200",
    outsider="404",
)
_sees_all = {**_sees, MEMBER: split("403", "404")}
# Requests for changes: the PI and managers only.
_manages = {**_sees_all, CLUSTER_ADMIN: split("403", "404")}
_project_page = _portal(
    split("200", "404"),
    staff="200",
    cluster_admin="404",
    member=split("403", "404"),
    outsider="404",
)
_reviews = _portal("404", staff="200", cluster_admin=split("200", "404"))


def _as(table: dict, ok: str) -> dict:
    """The same table for a form's POST: where a GET shows the page (200), a valid POST
    is done and redirects (`ok`)."""

    def fill(value):
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return ok if value == "200" else value

    return {role: fill(value) for role, value in table.items()}


_manages_members = _as(_sees_all, "302")


def _alloc(w, s) -> str:
    return f"/allocations/{w.side(s).allocation.code}/"


def _project(w, s) -> str:
    return f"/projects/{w.side(s).project.code}/"


PAGES = {
    # The benchmarks' reference page: the layout for anyone signed in; a token is not a
    # session, so the importer is sent to sign in like anyone else (to /accounts/login/,
    # which to:login, the admin's sign-in page, does not name).
    "ping": [Call("GET", lambda w, s: "/ping/", roles("200", anonymous="302", importer="302"))],
    # --- the portal: signed-in users; its pages send anyone else to /accounts/login/ ---
    # The dashboard lists only the user's own projects' allocations and their memberships
    # (not a cluster admin's clusters, nor everything for staff).
    "allocations:home": [
        Call(
            "GET",
            lambda w, s: "/",
            _portal(
                "200 sees:none",
                pi="200 sees:mine",
                manager="200 sees:mine",
                member="200 sees:mine",
            ),
            list_ids=lambda w, s: w.side(s).allocation.code,
        )
    ],
    "allocations:allocation": [Call("GET", lambda w, s: f"{_alloc(w, s)}", _sees)],
    "allocations:jobs": [Call("GET", lambda w, s: f"{_alloc(w, s)}jobs/", _sees)],
    # Every member's usage and the allocation's records: not for a plain member.
    "allocations:history": [Call("GET", lambda w, s: f"{_alloc(w, s)}history/", _sees_all)],
    "allocations:requests": [Call("GET", lambda w, s: f"{_alloc(w, s)}requests/", _sees_all)],
    "allocations:members": [Call("GET", lambda w, s: f"{_alloc(w, s)}members/", _sees_all)],
    "allocations:change-request": [
        Call("GET", lambda w, s: f"{_alloc(w, s)}requests/new/", _manages),
        Call(
            "POST",
            lambda w, s: f"{_alloc(w, s)}requests/new/",
            _as(_manages, "302"),
            body=lambda w, s: {
                "su_delta": "5",
                "requested_status": "",
                "priority": "2",
                "justification": "A few more runs",
            },
            format="multipart",
        ),
    ],
    # A project of one's own that one leads or manages.
    "allocations:allocation-request": [
        Call(
            "GET",
            lambda w, s: "/allocations/request/",
            _portal("403", staff="200", pi="200", manager="200"),
        )
    ],
    "allocations:member-add": [
        Call(
            "POST",
            lambda w, s: f"{_alloc(w, s)}members/add/",
            _manages_members,
            body=lambda w, s: {"user": w.side(s).fresh_user().username},
            format="multipart",
        )
    ],
    "allocations:member-cap": [
        Call(
            "POST",
            lambda w, s: f"/members/{w.side(s).membership.code}/cap/",
            _manages_members,
            body=lambda w, s: {f"{w.side(s).membership.code}-su_cap": w.side(s).new_cap()},
            format="multipart",
        )
    ],
    "allocations:member-status": [
        Call(
            "POST",
            lambda w, s: f"/members/{w.side(s).fresh_membership().code}/status/",
            _manages_members,
            body=lambda w, s: {"status": "INACTIVE", "reason": "Left the group"},
            format="multipart",
        )
    ],
    # The PI's request: those who see every member's usage, and the requester.
    "allocations:request-comment": [
        Call(
            "POST",
            lambda w, s: f"/requests/{w.side(s).pending.code}/comment/",
            _as(_sees_all, "302"),
            body=lambda w, s: {"text": "Any news?"},
            format="multipart",
        )
    ],
    # The requester, the PI and managers; a cluster admin rejects instead.
    "allocations:request-cancel": [
        Call(
            "POST",
            lambda w, s: f"/requests/{w.side(s).fresh_request().code}/cancel/",
            _as(_manages, "302"),
            body=lambda w, s: {"reason": ""},
            format="multipart",
        )
    ],
    # The PI and managers; a member who sees it is refused, anyone else finds nothing.
    "allocations:project": [Call("GET", lambda w, s: f"{_project(w, s)}", _project_page)],
    # Naming and removing managers: the PI (and staff); a manager is refused by the service.
    "allocations:project-manager-add": [
        Call(
            "POST",
            lambda w, s: f"{_project(w, s)}managers/add/",
            _as(_project_page, "302") | {MANAGER: split("400", "404")},
            body=lambda w, s: {"user": w.side(s).fresh_user().username},
            format="multipart",
        )
    ],
    "allocations:project-manager-remove": [
        Call(
            "POST",
            lambda w, s: f"{_project(w, s)}managers/remove/",
            _as(_project_page, "302") | {MANAGER: split("400", "404")},
            body=lambda w, s: {"user": w.side(s).fresh_manager().username},
            format="multipart",
        )
    ],
    # --- review pages: the cluster's admins and staff; 404 for anyone else ---
    "allocations:review:queue": [
        Call(
            "GET",
            lambda w, s: "/review/",
            _portal("403", staff="200 sees:both", cluster_admin="200 sees:mine"),
            list_ids=lambda w, s: w.side(s).pending.code,
        )
    ],
    # Only requests in the caller's own queue can be chosen; anything else is refused
    # on the form and the queue is shown again (with the refusal).
    "allocations:review:approve-several": [
        Call(
            "POST",
            lambda w, s: "/review/approve/",
            _portal("302"),
            body=lambda w, s: {"requests": [str(w.side(s).fresh_request().code)]},
            format="multipart",
        )
    ],
    "allocations:review:request": [
        Call("GET", lambda w, s: f"/review/requests/{w.side(s).pending.code}/", _reviews),
        Call(
            "POST",
            lambda w, s: f"/review/requests/{w.side(s).pending.code}/",
            _as(_reviews, "302"),
            body=lambda w, s: {"action": "comment", "text": "Which runs?"},
            format="multipart",
        ),
    ],
    "allocations:review:allocation": [
        Call("GET", lambda w, s: f"/review/allocations/{w.side(s).allocation.code}/", _reviews)
    ],
    "allocations:review:allocation-status": [
        Call(
            "GET",
            lambda w, s: f"/review/allocations/{w.side(s).allocation.code}/freeze/",
            _reviews,
        )
    ],
    "allocations:review:project-status": [
        Call("GET", lambda w, s: f"/review/projects/{w.side(s).project.code}/freeze/", _reviews)
    ],
    "allocations:review:member-status": [
        Call(
            "GET",
            lambda w, s: f"/review/members/{w.side(s).membership.code}/freeze/",
            _reviews,
        ),
        Call(
            "POST",
            lambda w, s: f"/review/members/{w.side(s).fresh_membership().code}/freeze/",
            _as(_reviews, "302"),
            body=lambda w, s: {"reason": "Runaway jobs"},
            format="multipart",
        ),
    ],
    "allocations:review:cluster": [
        Call("GET", lambda w, s: f"/review/clusters/{w.side(s).cluster.code}/", _reviews)
    ],
    "allocations:review:rates": [
        Call("GET", lambda w, s: f"/review/clusters/{w.side(s).cluster.code}/rates/", _reviews)
    ],
    "allocations:review:capacity": [
        Call("GET", lambda w, s: f"/review/clusters/{w.side(s).cluster.code}/capacity/", _reviews)
    ],
    "allocations:review:rate-close": [
        Call("GET", lambda w, s: f"/review/rates/{w.side(s).rate.code}/close/", _reviews)
    ],
    # --- signing in and out (django.contrib.auth.urls) ---
    "login": [Call("GET", lambda w, s: "/accounts/login/", roles("200"))],
    "logout": [
        # A POST (with the CSRF token); it ends on the "Signed out" page.
        Call("GET", lambda w, s: "/accounts/logout/", roles("405")),
        Call("POST", lambda w, s: "/accounts/logout/", roles("200")),
    ],
    "password_change": [Call("GET", lambda w, s: "/accounts/password_change/", _portal("200"))],
    "password_change_done": [
        Call("GET", lambda w, s: "/accounts/password_change/done/", _portal("200"))
    ],
    "password_reset": [Call("GET", lambda w, s: "/accounts/password_reset/", roles("200"))],
    "password_reset_done": [
        Call("GET", lambda w, s: "/accounts/password_reset/done/", roles("200"))
    ],
    # A link with a wrong token shows "invalid link" and changes nothing.
    "password_reset_confirm": [
        Call("GET", lambda w, s: "/accounts/reset/MQ/bad-token/", roles("200"))
    ],
    "password_reset_complete": [Call("GET", lambda w, s: "/accounts/reset/done/", roles("200"))],
    # Prometheus: METRICS_TOKEN (none in these settings) or a superuser's session.
    "metrics": [
        Call(
            "GET",
            lambda w, s: "/metrics",
            roles("403", anonymous="401", staff="200"),
        )
    ],
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
        # Signing out is a POST (with the CSRF token); staff end on the "Signed out" page,
        # anyone else is sent to the admin's sign-in.
        Call(
            "GET",
            lambda w, s: "/admin/logout/",
            roles("302 to:admin", staff="405", cluster_admin="405"),
        ),
        Call("POST", lambda w, s: "/admin/logout/", roles("302", staff="200", cluster_admin="200")),
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
    # A cluster admin uploads their clusters' accounting files (the add page is the
    # upload form), downloads the rejects and resumes a failed import; none is edited.
    "allocations.usageimport": AdminModel(
        "va",
        "va",
        extra={
            "rejects": roles("302 to:login", staff="200", cluster_admin=split("200", "404")),
            # Resuming is a POST; a GET is refused once the import is found.
            "resume": roles("302 to:login", staff="403", cluster_admin=split("403", "404")),
        },
    ),
    # What the sync client found and did: read-only, each cluster's for its admins.
    "allocations.syncreport": AdminModel("v", _CA_READ),
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
