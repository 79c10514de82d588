"""The browser portal for PIs, project managers and members. Thin: reads come from
selectors, writes go through services, and a service's refusal is shown on the form."""

import csv
import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Page, Paginator
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.models import User
from allocations import selectors, services
from allocations.conversion import SU_QUANTUM
from allocations.models import Allocation, ChangeRequest, Membership, Project, Resource, Status
from allocations.portal_forms import (
    AllocationRequestForm,
    CancelForm,
    CapForm,
    ChangeRequestForm,
    CommentForm,
    JobFilterForm,
    ManagerForm,
    MemberAddForm,
    MemberStatusForm,
    show_refusal,
)
from allocations.templatetags.portal import su
from portal.fragments import fragment
from portal.paging import page_of_rows
from portal.rows import link

PAGE_SIZE = 25
JOBS_PAGE_SIZE = 50
# Dashboard badges: "near the limit" from this share of the budget used or held, and
# "expiring soon" within this many days of the end date.
NEAR_LIMIT_PERCENT = Decimal(90)
EXPIRING_DAYS = 30


@dataclass(frozen=True)
class Access:
    """What the signed-in user may see and do on one allocation."""

    allocation: Allocation
    manages: bool  # the project's PI or a manager (or a superuser)
    administers: bool  # an admin of the allocation's cluster
    membership: Membership | None

    @property
    def sees_all(self) -> bool:
        """Managers and cluster admins see every member's usage; a member sees their own."""
        return self.manages or self.administers

    @property
    def manages_members(self) -> bool:
        return self.manages or self.administers


def _allocation_access(request: HttpRequest, code) -> Access:
    """404 for anyone with no business on the allocation, so outsiders cannot even
    learn that a code exists."""
    try:
        viewer = selectors.allocation_viewer(user=request.user, code=code)
    except Allocation.DoesNotExist:
        raise Http404("No such allocation.") from None
    membership = viewer.membership
    if membership is not None and membership.status == Status.DELETED:
        membership = None
    if not (viewer.manages or viewer.administers or membership):
        raise Http404("No such allocation.")
    return Access(viewer.allocation, viewer.manages, viewer.administers, membership)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise PermissionDenied(message)


def _page(request: HttpRequest, qs, per_page: int = PAGE_SIZE) -> Page:
    return Paginator(qs, per_page).get_page(request.GET.get("page"))


def _percent(part: Decimal, whole: Decimal) -> Decimal:
    if whole <= 0:
        return Decimal(100) if part > 0 else Decimal(0)
    return (part * 100 / whole).quantize(Decimal("0.1"))


def _badges(*, used, budget, status, end, percent: Decimal, has_pending: bool, today) -> list:
    badges = []
    # Holds are granted only within the balance, so only usage can overdraw.
    if used > budget:
        badges.append(("bad", "Overdrawn"))
    elif percent >= NEAR_LIMIT_PERCENT:
        badges.append(("warn", "Near the limit"))
    if status == Status.ACTIVE and today <= end <= today + dt.timedelta(days=EXPIRING_DAYS):
        badges.append(("warn", "Expiring soon"))
    if end < today:
        badges.append(("", "Ended"))
    if has_pending:
        badges.append(("info", "Request pending"))
    return badges


def _balance(*, budget, used, held, status, end, has_pending: bool, today) -> dict:
    """An allocation's balance as the dashboard and the allocation page show it."""
    percent = _percent(used + held, budget)
    return {
        "budget": budget,
        "used": used,
        "held": held,
        "remaining": budget - used - held,
        "percent": percent,
        "meter": min(percent, Decimal(100)),
        "level": "bad" if percent >= 100 else "warn" if percent >= NEAR_LIMIT_PERCENT else "",
        "badges": _badges(
            used=used,
            budget=budget,
            status=status,
            end=end,
            percent=percent,
            has_pending=has_pending,
            today=today,
        ),
    }


def _allocation_balance(allocation: Allocation) -> dict:
    return _balance(
        budget=allocation.su_budget,
        used=allocation.su_used,
        held=allocation.su_held,
        status=allocation.status,
        end=allocation.end,
        has_pending=allocation.has_pending,
        today=timezone.localdate(),
    )


def _member_balance(allocation: Allocation, membership: Membership | None) -> dict | None:
    if membership is None:
        return None
    remaining = allocation.su_remaining
    if membership.su_cap is not None:
        remaining = min(membership.su_cap - membership.su_used - membership.su_held, remaining)
    return {
        "used": membership.su_used,
        "held": membership.su_held,
        "cap": membership.su_cap,
        "remaining": remaining,
        "status": membership.get_status_display(),
    }


# --- dashboard ----------------------------------------------------------------------


@login_required
def home(request: HttpRequest) -> HttpResponse:
    user = request.user
    page = page_of_rows(
        partial(selectors.dashboard_allocations, user=user),
        request.GET.get("page"),
        PAGE_SIZE,
    )
    today = timezone.localdate()
    allocation_url = link("allocations:allocation")
    project_url = link("allocations:project")
    rows = [_dashboard_row(r, today, allocation_url, project_url) for r in page]
    return render(
        request,
        "portal/dashboard.html",
        {
            "page": page,
            "rows": rows,
            "table_rows": fragment("portal/dashboard_rows.html", {"rows": rows}),
            # An allocation of an active project the user manages already says yes;
            # otherwise ask (they may manage a project with no allocation listed).
            "can_request": any(r["i_manage"] and r["project_status"] == Status.ACTIVE for r in page)
            or selectors.projects_managed_by(user=user).filter(status=Status.ACTIVE).exists(),
        },
    )


_BADGE_OF_STATUS = {Status.ACTIVE: "badge-ok", Status.INACTIVE: "badge-warn"}


def _dashboard_row(r: dict, today: dt.date, allocation_url, project_url) -> dict:
    """What one dashboard row shows, worked out here so the template only prints it (the
    template language costs microseconds a tag: 25 rows of includes and filters cost
    more than the page's query)."""
    mine = None
    if r["my_status"] is not None and not r["i_manage"]:
        mine = {
            "used": su(r["my_su_used"]),
            "cap": None if r["my_su_cap"] is None else su(r["my_su_cap"]),
            "status": None if r["my_status"] == Status.ACTIVE else Status(r["my_status"]).label,
        }
    balance = _balance(
        budget=r["su_budget"],
        used=r["su_used"],
        held=r["su_held"],
        status=r["status"],
        end=r["end"],
        has_pending=r["has_pending"],
        today=today,
    )
    project_status = None
    if r["project_status"] != Status.ACTIVE:
        project_status = {
            "badge": _BADGE_OF_STATUS.get(r["project_status"], "badge-bad"),
            "label": f"Project {Status(r['project_status']).label}",
        }
    return {
        "url": allocation_url(r["code"]),
        "name": r["name"],
        "cluster": r["cluster_name"],
        "project_url": project_url(r["project_code"]) if r["i_manage"] else None,
        "project_title": r["project_title"],
        "project_status": project_status,
        "pi": r["pi_name"],
        "status_badge": _BADGE_OF_STATUS.get(r["status"], "badge-bad"),
        "status_label": Status(r["status"]).label,
        "mine": mine,
        "budget": su(balance["budget"]),
        "used": su(balance["used"]),
        "held": su(balance["held"]),
        "remaining": su(balance["remaining"]),
        "percent": balance["percent"],
        "meter": balance["meter"],
        "level": balance["level"],
        "end": r["end"].isoformat(),
        "badges": balance["badges"],
    }


# --- one allocation -----------------------------------------------------------------


# The links of every allocation page's head and tabs (templates/portal/_allocation_head.html).
_ALLOCATION_LINKS = {
    "overview": "allocations:allocation",
    "jobs": "allocations:jobs",
    "members": "allocations:members",
    "requests": "allocations:requests",
    "history": "allocations:history",
    "change": "allocations:change-request",
    "burndown_chart": "allocation-chart-burndown",
    "members_chart": "allocation-chart-members",
    "resources_chart": "allocation-chart-resources",
}


def _context(access: Access, tab: str, **extra) -> dict:
    allocation = access.allocation
    links = {key: link(name)(allocation.code) for key, name in _ALLOCATION_LINKS.items()}
    links["project"] = link("allocations:project")(allocation.project.code)
    return {
        "access": access,
        "allocation": allocation,
        "tab": tab,
        "links": links,
        "status_badge": _BADGE_OF_STATUS.get(allocation.status, "badge-bad"),
        **extra,
    }


@login_required
def allocation_detail(request: HttpRequest, code) -> HttpResponse:
    access = _allocation_access(request, code)
    allocation = access.allocation
    # The figures come from the daily rollups, in one query whatever the number of usage
    # rows; the page's charts fetch their own data from the chart endpoints.
    overview = selectors.allocation_overview(
        allocation=allocation,
        today=timezone.now().date(),
        # A member sees the allocation's balance but only their own usage.
        member=None if access.sees_all else request.user,
        with_members=access.sees_all,
    )
    members = [
        {
            "name": m["name"],
            "used": su(m["su_used"]),
            "cap": su(m["su_cap"]),
            "badge": _BADGE_OF_STATUS.get(m["status"], "badge-bad"),
            "status": Status(m["status"]).label,
        }
        for m in overview.top_members
    ]
    return render(
        request,
        "portal/allocation_detail.html",
        _context(
            access,
            "overview",
            balance=_allocation_balance(allocation),
            mine=_member_balance(allocation, access.membership),
            forecast=overview.forecast,
            by_resource=[(name, su(total)) for name, total in overview.by_resource],
            top_members=fragment("portal/top_members_rows.html", {"members": members}),
            resources=", ".join(overview.resources),
        ),
    )


CSV_COLUMNS = [
    "job_id",
    "user",
    "resource",
    "raw_unit_seconds",
    "su_charged",
    "su_net",
    "charged_at",
    "started_at",
    "ended_at",
]


class _Echo:
    def write(self, value):
        return value


def _jobs_csv(allocation: Allocation, qs) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())

    def rows():
        yield writer.writerow(CSV_COLUMNS)
        # iterator() streams in chunks, so an export of a million jobs never sits in memory.
        for job in qs.iterator(chunk_size=2000):
            yield writer.writerow(
                [
                    job.job_id,
                    job.user.username,
                    job.resource.name,
                    job.raw_unit_seconds,
                    job.su_amount,
                    # SQLite hands back an expression's Decimal at its own scale.
                    Decimal(job.su_net).quantize(SU_QUANTUM),
                    job.charged_at.isoformat(),
                    job.started_at.isoformat() if job.started_at else "",
                    job.ended_at.isoformat() if job.ended_at else "",
                ]
            )

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="{allocation.cluster.name}-{allocation.name}-jobs.csv"'
    )
    return response


@login_required
def allocation_jobs(request: HttpRequest, code) -> HttpResponse:
    access = _allocation_access(request, code)
    allocation = access.allocation
    # A member's own jobs only: the filter offers no one else, and the queryset is theirs.
    if access.sees_all:
        users = User.objects.filter(memberships__allocation=allocation).order_by("username")
    else:
        users = User.objects.filter(pk=request.user.pk)
    resources = Resource.objects.filter(allocations=allocation).order_by("name")
    filters = JobFilterForm(request.GET or None, users=users, resources=resources)
    qs = selectors.jobs_for(allocation=allocation, user=None if access.sees_all else request.user)
    qs = filters.apply(qs) if filters.is_bound else qs
    if request.GET.get("export") == "csv":
        return _jobs_csv(allocation, qs)
    page = _page(request, qs, JOBS_PAGE_SIZE)
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "portal/allocation_jobs.html",
        _context(access, "jobs", filters=filters, page=page, query=query.urlencode()),
    )


@login_required
def allocation_history(request: HttpRequest, code) -> HttpResponse:
    access = _allocation_access(request, code)
    _require(access.sees_all, "Only the project's PI, its managers and the cluster's admins.")
    changes = access.allocation.changes.select_related("actor", "change_request").order_by(
        "-created", "-id"
    )
    return render(
        request,
        "portal/allocation_history.html",
        _context(access, "history", page=_page(request, changes)),
    )


@login_required
def allocation_requests(request: HttpRequest, code) -> HttpResponse:
    access = _allocation_access(request, code)
    _require(access.sees_all, "Only the project's PI, its managers and the cluster's admins.")
    page = _page(request, selectors.requests_for_allocation(allocation=access.allocation), 10)
    return render(
        request,
        "portal/allocation_requests.html",
        _context(
            access, "requests", page=page, comment_form=CommentForm(), cancel_form=CancelForm()
        ),
    )


# --- requests -----------------------------------------------------------------------


@login_required
def allocation_request_new(request: HttpRequest) -> HttpResponse:
    projects = selectors.projects_managed_by(user=request.user).filter(status=Status.ACTIVE)
    _require(projects.exists(), "Only the PI or a manager of an active project may request SUs.")
    form = AllocationRequestForm(
        request.POST or None, projects=projects, initial={"project": request.GET.get("project")}
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            change_request = services.allocation_request_create(
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
            )
        except (ValidationError, PermissionDenied) as refusal:
            show_refusal(form, refusal, rename={"su_delta": "su_amount"})
        else:
            messages.success(request, "Your request was sent to the cluster's admins for review.")
            return redirect("allocations:requests", code=change_request.allocation.code)
    return render(request, "portal/allocation_request_form.html", {"form": form})


@login_required
def change_request_new(request: HttpRequest, code) -> HttpResponse:
    access = _allocation_access(request, code)
    _require(access.manages, "Only the project's PI or managers may request changes.")
    allocation = access.allocation
    form = ChangeRequestForm(request.POST or None, allocation=allocation)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            services.change_request_submit(
                actor=request.user,
                allocation=allocation,
                justification=data["justification"],
                su_delta=data["su_delta"],
                requested_status=data["requested_status"],
                requested_end=data["requested_end"],
                priority=data["priority"],
            )
        except (ValidationError, PermissionDenied) as refusal:
            show_refusal(form, refusal)
        else:
            messages.success(request, "Your change request was sent to the cluster's admins.")
            return redirect("allocations:requests", code=allocation.code)
    return render(
        request, "portal/change_request_form.html", _context(access, "requests", form=form)
    )


def _request_access(request: HttpRequest, code) -> tuple[Access, ChangeRequest]:
    change_request = get_object_or_404(
        ChangeRequest.objects.select_related("allocation"), code=code
    )
    access = _allocation_access(request, change_request.allocation.code)
    return access, change_request


def _action_failed(request, access: Access, form, title: str, action: str) -> HttpResponse:
    """A refused inline action: the same form again on its own page, errors beside its
    fields and the input kept, rather than a redirect that would lose both."""
    return render(
        request,
        "portal/action_form.html",
        _context(access, "", form=form, title=title, action=action),
        status=400,
    )


@login_required
@require_POST
def request_comment(request: HttpRequest, code) -> HttpResponse:
    access, change_request = _request_access(request, code)
    _require(
        access.sees_all or change_request.requester_id == request.user.pk,
        "Only the project's PI or managers and the cluster's admins may comment.",
    )
    form = CommentForm(request.POST)
    if form.is_valid():
        try:
            services.change_request_comment(
                actor=request.user, request=change_request, text=form.cleaned_data["text"]
            )
        except (ValidationError, PermissionDenied) as refusal:
            show_refusal(form, refusal)
        else:
            messages.success(request, "Your comment was added.")
            return redirect(_requests_url(access, change_request))
    return _action_failed(
        request,
        access,
        form,
        "Comment on the request",
        reverse("allocations:request-comment", args=[code]),
    )


@login_required
@require_POST
def request_cancel(request: HttpRequest, code) -> HttpResponse:
    access, change_request = _request_access(request, code)
    _require(
        access.manages or change_request.requester_id == request.user.pk,
        "Only the requester or the project's PI or managers may cancel a request.",
    )
    form = CancelForm(request.POST)
    if form.is_valid():
        try:
            services.change_request_cancel(
                actor=request.user, request=change_request, reason=form.cleaned_data["reason"]
            )
        except (ValidationError, PermissionDenied) as refusal:
            show_refusal(form, refusal)
        else:
            messages.success(request, "The request was cancelled.")
            return redirect(_requests_url(access, change_request))
    return _action_failed(
        request,
        access,
        form,
        "Cancel the request",
        reverse("allocations:request-cancel", args=[code]),
    )


def _requests_url(access: Access, change_request: ChangeRequest) -> str:
    url = reverse("allocations:requests", args=[access.allocation.code])
    return f"{url}#request-{change_request.code}"


# --- members ------------------------------------------------------------------------


@login_required
def allocation_members(request: HttpRequest, code) -> HttpResponse:
    access = _allocation_access(request, code)
    _require(access.sees_all, "Only the project's PI, its managers and the cluster's admins.")
    allocation = access.allocation
    page = _page(request, selectors.memberships_for_allocation(allocation=allocation))
    rows = [
        {
            "membership": m,
            "balance": _member_balance(allocation, m),
            "cap_form": CapForm(initial={"su_cap": m.su_cap}, prefix=str(m.code)),
        }
        for m in page
    ]
    return render(
        request,
        "portal/allocation_members.html",
        _context(
            access,
            "members",
            page=page,
            rows=rows,
            caps=selectors.cap_summary(allocation=allocation),
            add_form=MemberAddForm(),
        ),
    )


@login_required
@require_POST
def member_add(request: HttpRequest, code) -> HttpResponse:
    access = _allocation_access(request, code)
    _require(access.manages_members, "Only the project's PI or managers may manage members.")
    form = MemberAddForm(request.POST)
    if form.is_valid():
        try:
            membership = services.membership_add(
                actor=request.user,
                allocation=access.allocation,
                user=form.cleaned_data["user"],
                su_cap=form.cleaned_data["su_cap"],
            )
        except (ValidationError, PermissionDenied) as refusal:
            show_refusal(form, refusal)
        else:
            messages.success(request, f"{membership.user.username} is now a member.")
            return redirect("allocations:members", code=access.allocation.code)
    return _action_failed(
        request, access, form, "Add a member", reverse("allocations:member-add", args=[code])
    )


def _membership_access(request: HttpRequest, code) -> tuple[Access, Membership]:
    membership = get_object_or_404(
        Membership.objects.select_related("user", "allocation"), code=code
    )
    access = _allocation_access(request, membership.allocation.code)
    _require(access.manages_members, "Only the project's PI or managers may manage members.")
    return access, membership


@login_required
@require_POST
def member_cap(request: HttpRequest, code) -> HttpResponse:
    access, membership = _membership_access(request, code)
    form = CapForm(request.POST, prefix=str(membership.code))
    if form.is_valid():
        try:
            services.membership_set_cap(
                actor=request.user, membership=membership, su_cap=form.cleaned_data["su_cap"]
            )
        except (ValidationError, PermissionDenied) as refusal:
            show_refusal(form, refusal)
        else:
            cap = form.cleaned_data["su_cap"]
            messages.success(
                request,
                f"{membership.user.username}'s cap is now {cap} SU."
                if cap is not None
                else f"{membership.user.username} may now use the whole pool.",
            )
            return redirect("allocations:members", code=access.allocation.code)
    return _action_failed(
        request,
        access,
        form,
        f"Cap for {membership.user.username}",
        reverse("allocations:member-cap", args=[code]),
    )


@login_required
@require_POST
def member_status(request: HttpRequest, code) -> HttpResponse:
    access, membership = _membership_access(request, code)
    form = MemberStatusForm(request.POST)
    if form.is_valid():
        status = form.cleaned_data["status"]
        try:
            services.membership_set_status(
                actor=request.user,
                membership=membership,
                status=status,
                reason=form.cleaned_data["reason"],
            )
        except (ValidationError, PermissionDenied) as refusal:
            show_refusal(form, refusal)
        else:
            verb = "reactivated" if status == Status.ACTIVE else "deactivated"
            messages.success(request, f"{membership.user.username} was {verb}.")
            return redirect("allocations:members", code=access.allocation.code)
    return _action_failed(
        request,
        access,
        form,
        f"Status of {membership.user.username}",
        reverse("allocations:member-status", args=[code]),
    )


# --- projects -------------------------------------------------------------------------


def _project_access(request: HttpRequest, code) -> Project:
    project = get_object_or_404(Project.objects.select_related("pi"), code=code)
    if selectors.user_manages_project(user=request.user, project=project):
        return project
    if selectors.project_list_for(user=request.user).filter(pk=project.pk).exists():
        raise PermissionDenied("Only the project's PI and managers.")
    raise Http404("No such project.")


@login_required
def project_detail(request: HttpRequest, code) -> HttpResponse:
    project = _project_access(request, code)
    allocations = project.allocations.select_related("cluster").order_by("cluster__name", "name")
    return render(
        request,
        "portal/project.html",
        {
            "project": project,
            "page": _page(request, allocations),
            "managers": project.managers.order_by("username"),
            "is_pi": request.user.is_superuser or project.pi_id == request.user.pk,
            "add_form": ManagerForm(),
        },
    )


def _manager_action(request: HttpRequest, code, *, add: bool) -> HttpResponse:
    project = _project_access(request, code)
    form = ManagerForm(request.POST)
    if form.is_valid():
        user = form.cleaned_data["user"]
        action = services.project_add_manager if add else services.project_remove_manager
        try:
            action(actor=request.user, project=project, user=user)
        except (ValidationError, PermissionDenied) as refusal:
            show_refusal(form, refusal)
        else:
            verb = "now manages" if add else "no longer manages"
            messages.success(request, f"{user.username} {verb} {project.title}.")
            return redirect("allocations:project", code=project.code)
    name = "allocations:project-manager-add" if add else "allocations:project-manager-remove"
    return render(
        request,
        "portal/project_action.html",
        {
            "project": project,
            "form": form,
            "title": "Name a manager" if add else "Remove a manager",
            "action": reverse(name, args=[code]),
        },
        status=400,
    )


@login_required
@require_POST
def project_manager_add(request: HttpRequest, code) -> HttpResponse:
    return _manager_action(request, code, add=True)


@login_required
@require_POST
def project_manager_remove(request: HttpRequest, code) -> HttpResponse:
    return _manager_action(request, code, add=False)
