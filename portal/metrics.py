"""Prometheus metrics at /metrics, read from the database at scrape time.

Web and worker processes come and go, so nothing is counted in memory: every value is a
query (a fixed number of them, whatever the size of the site), and task failures are
rows written by a Celery signal (allocations.tasks.record_task_failure).

Access: `Authorization: Bearer <METRICS_TOKEN>` or a signed-in site admin; 401 without
credentials, 403 with wrong ones.
"""

import datetime as dt
import hmac
from collections import defaultdict
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, Sum
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from allocations.models import (
    AlertSent,
    Allocation,
    ChangeRequest,
    Cluster,
    Status,
    TaskFailure,
    Usage,
    UsageDaily,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Ingestion delay is measured over the most recent usage records, so a scrape reads a
# bounded number of rows however large the usage table grows.
RECENT_USAGE_ROWS = 1000


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Exposition:
    """Prometheus text format, version 0.0.4."""

    def __init__(self):
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            suffix = f"{{{label_text}}}" if label_text else ""
            self.lines.append(f"{name}{suffix} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _number(value) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _authorized(request) -> int | None:
    """None when the request may read the metrics, else the status to answer with."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        token = header.removeprefix("Bearer ").strip()
        if settings.METRICS_TOKEN and hmac.compare_digest(
            token.encode(), settings.METRICS_TOKEN.encode()
        ):
            return None
        return 403
    if request.user.is_authenticated:
        return None if request.user.is_superuser else 403
    return 401


def collect(now: dt.datetime | None = None) -> str:
    now = now or timezone.now()
    out = Exposition()
    clusters = dict(Cluster.objects.values_list("pk", "name"))

    by_status = defaultdict(int)
    budgeted, used, held = defaultdict(Decimal), defaultdict(Decimal), defaultdict(Decimal)
    for cluster_id, status, count, budget, su_used, su_held in (
        Allocation.objects.values("cluster_id", "status")
        .annotate(n=Count("id"), b=Sum("su_budget"), u=Sum("su_used"), h=Sum("su_held"))
        .order_by()
        .values_list("cluster_id", "status", "n", "b", "u", "h")
    ):
        by_status[(clusters[cluster_id], status)] = count
        if status == Status.ACTIVE:
            budgeted[clusters[cluster_id]] += Decimal(budget)
            used[clusters[cluster_id]] += Decimal(su_used)
            held[clusters[cluster_id]] += Decimal(su_held)
    out.metric(
        "su_portal_allocations",
        "gauge",
        "Allocations by cluster and status.",
        [
            ({"cluster": name, "status": status}, by_status[(name, status)])
            for name in sorted(clusters.values())
            for status in Status.values
        ],
    )
    for metric, values, text in (
        ("su_portal_budget_su", budgeted, "SUs budgeted to active allocations."),
        ("su_portal_used_su", used, "SUs used by active allocations."),
        ("su_portal_held_su", held, "SUs held for running jobs of active allocations."),
    ):
        out.metric(
            metric,
            "gauge",
            text,
            [({"cluster": n}, values[n]) for n in sorted(clusters.values())],
        )

    pending = dict(
        ChangeRequest.objects.filter(state=ChangeRequest.State.PENDING)
        .values("allocation__cluster_id")
        .annotate(n=Count("id"))
        .order_by()
        .values_list("allocation__cluster_id", "n")
    )
    out.metric(
        "su_portal_pending_requests",
        "gauge",
        "Change requests waiting for a decision.",
        [({"cluster": name}, pending.get(pk, 0)) for pk, name in sorted(clusters.items())],
    )

    jobs = dict(
        UsageDaily.objects.values("allocation__cluster_id")
        .annotate(n=Sum("jobs"))
        .order_by()
        .values_list("allocation__cluster_id", "n")
    )
    out.metric(
        "su_portal_usage_records",
        "counter",
        "Usage records ingested (from the daily rollups).",
        [({"cluster": name}, jobs.get(pk, 0) or 0) for pk, name in sorted(clusters.items())],
    )

    # The newest usage rows by id, whose index makes this a short backwards scan.
    recent = list(
        Usage.objects.order_by("-id").values_list("cluster_id", "recorded_at", "ended_at")[
            :RECENT_USAGE_ROWS
        ]
    )
    last_recorded: dict[int, dt.datetime] = {}
    delays: dict[int, list[float]] = defaultdict(list)
    for cluster_id, recorded_at, ended_at in recent:
        last_recorded.setdefault(cluster_id, recorded_at)
        if ended_at is not None:
            delays[cluster_id].append((recorded_at - ended_at).total_seconds())
    out.metric(
        "su_portal_ingest_last_record_age_seconds",
        "gauge",
        "Seconds since the newest usage record of the cluster was recorded.",
        [
            ({"cluster": clusters[pk]}, round((now - when).total_seconds(), 3))
            for pk, when in sorted(last_recorded.items())
        ],
    )
    out.metric(
        "su_portal_ingest_delay_seconds",
        "gauge",
        f"Mean seconds from a job's end to its usage being recorded, over the last "
        f"{RECENT_USAGE_ROWS} records.",
        [
            ({"cluster": clusters[pk]}, round(sum(values) / len(values), 3))
            for pk, values in sorted(delays.items())
        ],
    )
    failures = TaskFailure.objects.values("task").annotate(n=Count("id")).order_by("task")
    out.metric(
        "su_portal_task_failures",
        "counter",
        "Background tasks that raised, by task.",
        [({"task": row["task"]}, row["n"]) for row in failures],
    )
    alerts = AlertSent.objects.values("kind").annotate(n=Count("id")).order_by("kind")
    out.metric(
        "su_portal_alerts_sent",
        "counter",
        "Warning e-mails recorded, by kind.",
        [({"kind": row["kind"].lower()}, row["n"]) for row in alerts],
    )
    return out.text()


@require_GET
def metrics(request):
    refused = _authorized(request)
    if refused == 401:
        response = HttpResponse("Authentication required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if refused:
        return HttpResponse("Not allowed.\n", status=403, content_type="text/plain")
    return HttpResponse(collect(), content_type=CONTENT_TYPE)
