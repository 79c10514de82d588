"""The review pages of cluster admins (superusers: every cluster): the queue of pending
requests, decisions, freezing, rates and capacity. Thin: reads come from selectors, writes
go through services, and a service's refusal is shown beside the field it names.

Anyone who does not administer the object's cluster gets a 404, so a code reveals nothing.
"""

from decimal import Decimal

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Page, Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import dateformat, timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.timesince import timesince
from django.views.decorators.http import require_POST

from allocations import selectors, services
from allocations.forecasts import RATE_WINDOW_DAYS
from allocations.models import (
    Allocation,
    ChangeRequest,
    Cluster,
    Membership,
    Project,
    Rate,
    Status,
)
from allocations.review_forms import (
    ApproveForm,
    BulkApproveForm,
    CapacityForm,
    CommentForm,
    QueueFilterForm,
    RateAddForm,
    RateCloseForm,
    RejectForm,
    StatusForm,
    show_refusal,
)
from allocations.templatetags.portal import signed_su, su
from portal.fragments import fragment
from portal.rows import link

PAGE_SIZE = 25
Refusal = (ValidationError, PermissionDenied)


def _page(request: HttpRequest, qs, per_page: int = PAGE_SIZE, param: str = "page") -> Page:
    return Paginator(qs, per_page).get_page(request.GET.get(param))


def _administered(request: HttpRequest, cluster: Cluster) -> None:
    if not selectors.user_administers_cluster(user=request.user, cluster=cluster):
        raise Http404("No such page.")


def _cluster_for_admin(request: HttpRequest, code) -> Cluster:
    cluster = get_object_or_404(Cluster, code=code)
    _administered(request, cluster)
    return cluster


def _allocation_for_admin(request: HttpRequest, code) -> Allocation:
    allocation = get_object_or_404(
        Allocation.objects.select_related("project__pi", "cluster"), code=code
    )
    _administered(request, allocation.cluster)
    return allocation


def _back(request: HttpRequest, default: str) -> str:
    target = request.POST.get("next") or request.GET.get("next")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return default


# --- the queue ------------------------------------------------------------------------


@login_required
def queue(request: HttpRequest) -> HttpResponse:
    user = request.user
    now = timezone.now()
    clusters, budgets = selectors.review_clusters(user=user, today=now.date())
    if not user.is_superuser and not selectors.user_administers_any_cluster(user=user):
        raise PermissionDenied("The review queue is for the admins of a cluster.")
    filters = QueueFilterForm(request.GET or None, clusters=clusters)
    cluster = max_su = None
    if filters.is_valid():
        cluster = filters.cleaned_data["cluster"]
        max_su = filters.cleaned_data["max_su"]
    page = selectors.review_queue_page(
        user=user,
        clusters=clusters,
        budgets=budgets,
        cluster=cluster,
        max_su=max_su,
        page=request.GET.get("page"),
        per_page=PAGE_SIZE,
        now=now,
    )
    return render(
        request,
        "review/queue.html",
        {
            "page": page,
            "rows": page.object_list,
            "table_rows": fragment(
                "review/queue_rows.html", {"rows": _queue_rows(page.object_list, now)}
            ),
            "filters": filters,
            "filter_fields": fragment("portal/fields.html", {"fields": list(filters)}),
            "clusters": clusters,
            "query": _query_without_page(request),
            "burn_window_days": RATE_WINDOW_DAYS,
        },
    )


def _query_without_page(request: HttpRequest) -> str:
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()


_PRIORITIES = dict(ChangeRequest.Priority.choices)
_KINDS = dict(ChangeRequest.Kind.choices)
_STATUSES = dict(Status.choices)


def _queue_rows(rows: list[dict], now) -> list[dict]:
    """What each row of the queue shows, worked out here for the Jinja2 fragment that
    prints it (portal/fragments.py says why)."""
    to_request = link("allocations:review:request")
    months: dict = {}
    out = []
    for row in rows:
        c = row["commitment"]
        if c.month not in months:
            months[c.month] = dateformat.format(c.month, "M Y")
        code = str(row["code"])  # printed twice: a UUID's str() is slow
        out.append(
            {
                "code": code,
                "url": to_request(code),
                "name": row["name"],
                "high": row["priority"] >= ChangeRequest.Priority.HIGH,
                "priority": _PRIORITIES[row["priority"]],
                # Against the clock the figures were worked out at.
                "age": timesince(row["created"], now),
                "cluster": row["cluster_name"],
                "project": row["project_title"],
                "pi": f"{row['pi_first_name']} {row['pi_last_name']}".strip() or row["pi_username"],
                "kind": _KINDS[row["kind"]],
                "requester": row["requester_username"],
                "su_delta": None if row["su_delta"] is None else signed_su(row["su_delta"]),
                "requested_status": _STATUSES.get(row["requested_status"]),
                "requested_end": row["requested_end"] and row["requested_end"].isoformat(),
                "used": su(row["su_used"]),
                "budget": su(row["su_budget"]),
                "percent": _percent(row["su_used"], row["su_budget"]),
                "overdrawn": row["su_used"] > row["su_budget"],
                "burn": su(row["burn_rate"]),
                "history": [(state.lower(), n) for state, n in row["history"].items()],
                "commitment": {
                    "month": months[c.month],
                    "committed": su(c.committed),
                    "committed_percent": c.committed_percent,
                    "if_approved": su(c.if_approved),
                    "if_approved_percent": c.if_approved_percent,
                    "capacity": None if c.capacity is None else su(c.capacity),
                    "over": c.over_capacity,
                },
            }
        )
    return out


def _percent(part: Decimal, whole: Decimal) -> Decimal | None:
    if not whole:
        return None
    return (part * 100 / whole).quantize(Decimal("0.1"))


@login_required
@require_POST
def approve_several(request: HttpRequest) -> HttpResponse:
    form = BulkApproveForm(request.POST, queue=selectors.review_queue(user=request.user).order_by())
    back = _back(request, reverse("allocations:review:queue"))
    if not form.is_valid():
        messages.error(request, " ".join(form.errors.get("requests", ["Choose requests."])))
        return redirect(back)
    chosen = list(form.cleaned_data["requests"])
    try:
        changes = services.change_requests_approve_several(actor=request.user, requests=chosen)
    except Refusal as refusal:
        messages.error(request, " ".join(getattr(refusal, "messages", [str(refusal)])))
        return redirect(back)
    granted = sum((c.su_delta for c in changes), Decimal(0))
    names = ", ".join(sorted(r.allocation.name for r in chosen))
    messages.success(
        request,
        f"Approved {len(changes)} request{'s' if len(changes) != 1 else ''} as asked "
        f"({names}); {granted:+,} SU in all.",
    )
    return redirect(back)


# --- one request ------------------------------------------------------------------------

DECISION_FORMS = {"approve": ApproveForm, "reject": RejectForm, "comment": CommentForm}


@login_required
def request_detail(request: HttpRequest, code) -> HttpResponse:
    change_request = get_object_or_404(
        ChangeRequest.objects.select_related(
            "allocation__project__pi", "allocation__cluster", "requester", "decided_by"
        ),
        code=code,
    )
    _administered(request, change_request.allocation.cluster)
    forms = {name: form_class() for name, form_class in DECISION_FORMS.items()}
    action = request.POST.get("action")
    if request.method == "POST":
        if action not in DECISION_FORMS:
            raise Http404("No such action.")
        form = DECISION_FORMS[action](request.POST)
        forms[action] = form
        if form.is_valid():
            try:
                done = _decide(request, change_request, action, form.cleaned_data)
            except Refusal as refusal:
                show_refusal(form, refusal, rename=getattr(form, "service_fields", None))
            else:
                messages.success(request, done)
                if action == "comment":
                    return redirect("allocations:review:request", code=change_request.code)
                return redirect("allocations:review:queue")
    return render(
        request,
        "review/request.html",
        _request_context(request, change_request, forms, action),
        status=400 if request.method == "POST" else 200,
    )


def _decide(request: HttpRequest, change_request: ChangeRequest, action: str, data) -> str:
    name = f"{change_request.allocation.name} on {change_request.allocation.cluster.name}"
    if action == "approve":
        change = services.change_request_approve(
            actor=request.user,
            request=change_request,
            su_approved=data["su_approved"],
            reason=data["reason"],
        )
        return f"Approved the request for {name}: the budget is now {change.su_budget:,} SU."
    if action == "reject":
        services.change_request_reject(
            actor=request.user, request=change_request, reason=data["reason"]
        )
        return f"Rejected the request for {name}."
    services.change_request_comment(actor=request.user, request=change_request, text=data["text"])
    return "Comment added; the requester and the PI are told."


def _request_context(request, change_request: ChangeRequest, forms: dict, action) -> dict:
    allocation = change_request.allocation
    now = timezone.now()
    return {
        "change_request": change_request,
        "allocation": allocation,
        "project": allocation.project,
        "percent_used": _percent(allocation.su_used, allocation.su_budget),
        # The PI's forecast: the same burn rate and exhaustion date as the allocation page.
        "forecast": selectors.allocation_forecast(allocation=allocation, today=now.date()),
        "commitment": selectors.commitments_for_requests(
            requests=[change_request], today=now.date()
        )[change_request.pk],
        "events": change_request.events.select_related("actor"),
        "history": _page(
            request, selectors.project_decided_requests(project=allocation.project), 10
        ),
        "project_allocations": allocation.project.allocations.select_related("cluster").order_by(
            "-end", "name"
        )[:20],
        "forms": forms,
        "action": action,
    }


# --- freezing ------------------------------------------------------------------------------


@login_required
def allocation_detail(request: HttpRequest, code) -> HttpResponse:
    allocation = _allocation_for_admin(request, code)
    members = _page(
        request,
        Membership.objects.filter(allocation=allocation)
        .exclude(status=Status.DELETED)
        .select_related("user")
        .order_by("user__username"),
    )
    pending = selectors.review_queue(user=request.user).filter(allocation=allocation)[:10]
    return render(
        request,
        "review/allocation.html",
        {
            "allocation": allocation,
            "project": allocation.project,
            "members": members,
            "pending": pending,
            "percent_used": _percent(allocation.su_used, allocation.su_budget),
        },
    )


FREEZE = {"freeze": Status.INACTIVE, "unfreeze": Status.ACTIVE}
DONE = {"freeze": "frozen", "unfreeze": "unfrozen"}


def _status_page(request, *, what: str, current: str, action: str, apply, back: str):
    """The confirm-with-a-reason page of a freeze or unfreeze, and its POST."""
    if action not in FREEZE:
        raise Http404("No such action.")
    form = StatusForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            apply(FREEZE[action], form.cleaned_data["reason"])
        except Refusal as refusal:
            show_refusal(form, refusal)
        else:
            messages.success(request, f"{DONE[action].capitalize()}: {what}.")
            return redirect(back)
    return render(
        request,
        "review/status_form.html",
        {"form": form, "what": what, "current": current, "action": action, "back": back},
        status=400 if request.method == "POST" else 200,
    )


@login_required
def project_status(request: HttpRequest, code, action: str) -> HttpResponse:
    project = get_object_or_404(Project.objects.select_related("pi"), code=code)
    user = request.user
    # As the service decides: an admin of any cluster the project has an allocation on.
    if not (
        user.is_superuser
        or Allocation.objects.filter(project=project, cluster__admins=user).exists()
    ):
        raise Http404("No such page.")
    return _status_page(
        request,
        what=f"the project {project.title}",
        current=project.get_status_display(),
        action=action,
        apply=lambda status, reason: services.project_set_status(
            actor=user, project=project, status=status, reason=reason
        ),
        back=_back(request, reverse("allocations:review:queue")),
    )


@login_required
def allocation_status(request: HttpRequest, code, action: str) -> HttpResponse:
    allocation = _allocation_for_admin(request, code)
    return _status_page(
        request,
        what=f"the allocation {allocation.name}",
        current=allocation.get_status_display(),
        action=action,
        apply=lambda status, reason: services.allocation_set_status(
            actor=request.user, allocation=allocation, status=status, reason=reason
        ),
        back=reverse("allocations:review:allocation", args=[allocation.code]),
    )


@login_required
def member_status(request: HttpRequest, code, action: str) -> HttpResponse:
    membership = get_object_or_404(
        Membership.objects.select_related("user", "allocation__cluster", "allocation__project"),
        code=code,
    )
    _administered(request, membership.allocation.cluster)
    if membership.status == Status.DELETED:
        raise Http404("No such member.")
    return _status_page(
        request,
        what=f"{membership.user.username} on {membership.allocation.name}",
        current=membership.get_status_display(),
        action=action,
        apply=lambda status, reason: services.membership_set_status(
            actor=request.user, membership=membership, status=status, reason=reason
        ),
        back=reverse("allocations:review:allocation", args=[membership.allocation.code]),
    )


# --- clusters: allocations, rates, capacity ---------------------------------------------------


@login_required
def cluster_detail(request: HttpRequest, code) -> HttpResponse:
    cluster = _cluster_for_admin(request, code)
    status = request.GET.get("status", "")
    if status not in Status.values:
        status = ""
    search = request.GET.get("q", "").strip()[:100]
    page = _page(
        request, selectors.allocations_on_cluster(cluster=cluster, status=status, search=search)
    )
    today = timezone.now().date()
    return render(
        request,
        "review/cluster.html",
        {
            "cluster": cluster,
            "page": page,
            "status": status,
            "statuses": Status.choices,
            "q": search,
            "query": _query_without_page(request),
            "this_month": selectors.cluster_commitment_by_month(
                cluster=cluster, first_month=today, months=1
            )[0],
            "pending_count": selectors.review_queue(user=request.user, cluster=cluster).count(),
            "tab": "allocations",
        },
    )


@login_required
def rates(request: HttpRequest, code) -> HttpResponse:
    cluster = _cluster_for_admin(request, code)
    form = RateAddForm(request.POST or None, cluster=cluster)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            rate = services.rate_add(
                actor=request.user,
                resource=data["resource"],
                su_per_unit_hour=data["su_per_unit_hour"],
                start=data["start"],
                end=data["end"],
                reason=data["reason"],
            )
        except Refusal as refusal:
            show_refusal(form, refusal)
        else:
            messages.success(request, f"Added the rate window {rate}.")
            return redirect("allocations:review:rates", code=cluster.code)
    page = _page(request, selectors.rates_on_cluster(cluster=cluster))
    page.object_list = list(page.object_list)
    for rate in page.object_list:
        # Rates are read both ways in the source documents; the page shows both.
        if rate.su_per_unit_hour:
            rate.per_su = (1 / rate.su_per_unit_hour).quantize(Decimal("0.0001"))
    return render(
        request,
        "review/rates.html",
        {
            "cluster": cluster,
            "form": form,
            "page": page,
            "now": timezone.now(),
            "tab": "rates",
        },
        status=400 if request.method == "POST" else 200,
    )


@login_required
def rate_close(request: HttpRequest, code) -> HttpResponse:
    rate = get_object_or_404(Rate.objects.select_related("resource__cluster"), code=code)
    cluster = rate.resource.cluster
    _administered(request, cluster)
    form = RateCloseForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.rate_close(
                actor=request.user,
                rate=rate,
                end=form.cleaned_data["end"],
                reason=form.cleaned_data["reason"],
            )
        except Refusal as refusal:
            show_refusal(form, refusal)
        else:
            messages.success(request, f"The rate window of {rate.resource.name} now ends.")
            return redirect("allocations:review:rates", code=cluster.code)
    return render(
        request,
        "review/rate_close.html",
        {"cluster": cluster, "rate": rate, "form": form, "tab": "rates"},
        status=400 if request.method == "POST" else 200,
    )


@login_required
def capacity(request: HttpRequest, code) -> HttpResponse:
    cluster = _cluster_for_admin(request, code)
    current = cluster.su_capacity_per_month
    form = CapacityForm(
        request.POST or None,
        # 7500, not 7500.0000: the field shows what an admin would type.
        initial={
            "su_capacity_per_month": f"{current:f}".rstrip("0").rstrip(".") if current else ""
        },
    )
    if request.method == "POST" and form.is_valid():
        try:
            services.cluster_set_capacity(
                actor=request.user,
                cluster=cluster,
                su_capacity_per_month=form.cleaned_data["su_capacity_per_month"],
                reason=form.cleaned_data["reason"],
            )
        except Refusal as refusal:
            show_refusal(form, refusal)
        else:
            messages.success(request, f"The capacity of {cluster.name} is changed.")
            return redirect("allocations:review:capacity", code=cluster.code)
    history = cluster.capacity_changes.select_related("actor").order_by("-created", "-pk")
    return render(
        request,
        "review/capacity.html",
        {
            "cluster": cluster,
            "form": form,
            "months": selectors.cluster_commitment_by_month(
                cluster=cluster, first_month=timezone.now().date()
            ),
            "page": _page(request, history),
            "tab": "capacity",
        },
        status=400 if request.method == "POST" else 200,
    )
