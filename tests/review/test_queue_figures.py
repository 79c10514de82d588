"""The figures each queue row shows, on a small fixture: usage and percent of the budget,
burn rate, the project's earlier requests, and the cluster's commitment now and if
approved. They are the figures the request page computes (the allocation's forecast and
commitments_for_requests), whatever the database."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from allocations import selectors, services
from allocations.adjustments import usage_refund
from allocations.models import ChangeRequest
from tests.conftest import NOW, usage
from tests.review.conftest import client_as


def url() -> str:
    from django.urls import reverse

    return reverse("allocations:review:queue")


def charge(allocation, user, resource, job: str, gpu_hours, when):
    services.usage_record_batch(
        cluster=allocation.cluster,
        records=[usage(allocation, user, resource, job, gpu_hours, when=when)],
    )


@pytest.fixture
def queue(
    allocation, alice, bob, dana, gpu, cluster, monkeypatch, django_capture_on_commit_callbacks
):
    """1,000 SU over 2026 on a cluster of 100 SU a month; 190 SU charged, 90 of them net
    of a refund in the last 28 days; one approved, one rejected and one cancelled request
    before three pending ones (a top-up, a freeze with a new end, a new allocation next
    year)."""
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    cluster.su_capacity_per_month = Decimal(100)
    cluster.save()
    charge(allocation, bob, gpu, "old", 50, NOW - dt.timedelta(days=31))  # 100 SU, outside
    charge(allocation, bob, gpu, "a", 15, NOW - dt.timedelta(days=20))  # 30 SU
    charge(allocation, bob, gpu, "b", 30, NOW - dt.timedelta(days=1))  # 60 SU
    charge(allocation, bob, gpu, "lost", 15, NOW - dt.timedelta(days=2))  # 30 SU, refunded
    with django_capture_on_commit_callbacks(execute=True):
        usage_refund(actor=dana, cluster=cluster, job_id="lost", reason="Node failure")
    rejected = services.change_request_submit(
        actor=alice, allocation=allocation, su_delta="9000", justification="Lots"
    )
    services.change_request_reject(actor=dana, request=rejected, reason="Too much")
    cancelled = services.change_request_submit(
        actor=alice, allocation=allocation, su_delta="1", justification="Oops"
    )
    services.change_request_cancel(actor=alice, request=cancelled)
    top_up = services.change_request_submit(
        actor=alice,
        allocation=allocation,
        su_delta="500",
        justification="More runs",
        priority=ChangeRequest.Priority.URGENT,
    )
    freeze = services.change_request_submit(
        actor=alice,
        allocation=allocation,
        requested_status="INACTIVE",
        requested_end=dt.date(2026, 9, 30),
        justification="Pause",
        priority=ChangeRequest.Priority.HIGH,
    )
    next_year = services.allocation_request_create(
        actor=alice,
        project=allocation.project,
        cluster=cluster,
        name="next-year",
        resources=[gpu],
        su_amount="3100",
        start=dt.date(2027, 1, 1),
        end=dt.date(2027, 1, 31),
        justification="Next year",
    )
    allocation.refresh_from_db()
    return {"top_up": top_up, "freeze": freeze, "next_year": next_year}


def rows_of(response) -> dict:
    return {row["code"]: row for row in response.context["rows"]}


def test_each_row_shows_the_request_page_figures(queue, dana, allocation):
    response = client_as(dana).get(url())

    rows = rows_of(response)
    requests = list(
        ChangeRequest.objects.filter(state="PENDING").select_related("allocation__cluster")
    )
    commitments = selectors.commitments_for_requests(requests=requests, today=NOW.date())
    assert set(rows) == {r.code for r in requests}
    for request in requests:
        row = rows[request.code]
        forecast = selectors.allocation_forecast(allocation=request.allocation, today=NOW.date())
        assert row["burn_rate"] == forecast.burn_rate
        assert row["commitment"] == commitments[request.pk]
        assert row["history"] == {"APPROVED": 1, "REJECTED": 1, "CANCELLED": 1}


def test_the_figures_on_a_small_fixture(queue, dana):
    response = client_as(dana).get(url())

    rows = rows_of(response)
    top_up, freeze, next_year = (rows[queue[k].code] for k in ("top_up", "freeze", "next_year"))
    assert [row["code"] for row in response.context["rows"]] == [
        queue["top_up"].code,
        queue["freeze"].code,
        queue["next_year"].code,
    ]
    assert top_up["burn_rate"] == Decimal("3.2143")  # (30 + 60 + 30 - 30) / 28 days
    assert next_year["burn_rate"] == 0
    assert (top_up["su_used"], top_up["su_budget"]) == (Decimal("190"), Decimal("1000"))
    body = response.content.decode()
    assert '190 of 1,000<br><span class="muted">19.0%</span>' in body
    assert next_year["su_budget"] == 0  # no budget before approval, so no percent
    # June 2026: 1,000 SU over 365 days, 30 of them in June, against 100 SU.
    assert (top_up["commitment"].committed, top_up["commitment"].if_approved) == (
        Decimal("82.1918"),
        Decimal("123.2877"),
    )
    assert top_up["commitment"].over_capacity
    assert (freeze["commitment"].committed, freeze["commitment"].if_approved) == (
        Decimal("82.1918"),
        0,
    )
    assert next_year["commitment"].month == dt.date(2027, 1, 1)
    assert (next_year["commitment"].committed, next_year["commitment"].if_approved) == (
        0,
        Decimal(3100),
    )
    assert next_year["history"] == {"APPROVED": 1, "REJECTED": 1, "CANCELLED": 1}


def test_the_page_shows_them(queue, dana):
    html = " ".join(client_as(dana).get(url()).content.decode().split())

    assert "<strong>+500 SU</strong>" in html
    assert '<span class="badge badge-info">status → Inactive</span>' in html
    assert '<span class="badge badge-info">end → 2026-09-30</span>' in html
    assert '<td class="num">190 of 1,000<br><span class="muted">19.0%</span></td>' in html
    assert '<td class="num">3.2143</td>' in html
    assert "<td>1 approved, 1 cancelled, 1 rejected</td>" in html
    assert (
        'Jun 2026: 82.1918 (82.2%) → <strong class="error">123.2877 (123.3%)</strong> '
        '<span class="muted">of 100</span> <span class="badge badge-bad">over capacity</span>'
    ) in html
    assert "Jun 2026: 82.1918 (82.2%) → <strong>0 (0.0%)</strong>" in html
    assert 'Jan 2027: 0 (0.0%) → <strong class="error">3,100 (3100.0%)</strong>' in html
    assert '<span class="badge badge-warn">Urgent</span>' in html
    assert "PI Alice Archer" in html


def test_a_project_without_earlier_requests_says_so(pending_request, dana):
    html = client_as(dana).get(url()).content.decode()

    assert '<span class="muted">first request</span>' in html


def test_each_row_says_how_long_its_request_has_waited(queue, dana):
    ChangeRequest.objects.filter(pk=queue["freeze"].pk).update(
        created=NOW - dt.timedelta(days=3, hours=2, minutes=5)
    )

    html = client_as(dana).get(url()).content.decode()

    assert "3\xa0days, 2\xa0hours ago" in html
    assert html.count("0\xa0minutes ago") == 2  # the other two, made at NOW


def test_an_ended_allocation_burns_as_its_forecast_says(
    alice, project, cluster, gpu, dana, bob, monkeypatch
):
    """Its window is the 28 days to its end date, not to today: each database's date
    arithmetic in the queue's statement must say the same as forecasts.rate_window."""
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    request = services.allocation_request_create(
        actor=alice,
        project=project,
        cluster=cluster,
        name="spring",
        resources=[gpu],
        su_amount="1000",
        start=dt.date(2026, 3, 1),
        end=dt.date(2026, 5, 31),
        justification="Spring",
    )
    services.change_request_approve(actor=dana, request=request)
    spring = request.allocation
    services.membership_add(actor=alice, allocation=spring, user=bob)
    for job, day in (("before", 3), ("first", 4), ("last", 31)):
        when = dt.datetime(2026, 5, day, 12, tzinfo=dt.UTC)
        charge(spring, bob, gpu, job, 7, when)  # 14 SU each
    extension = services.change_request_submit(
        actor=alice, allocation=spring, requested_end=dt.date(2026, 8, 31), justification="Late"
    )

    row = rows_of(client_as(dana).get(url()))[extension.code]

    spring.refresh_from_db()
    forecast = selectors.allocation_forecast(allocation=spring, today=NOW.date())
    assert forecast.window_days == 28
    assert row["burn_rate"] == forecast.burn_rate == Decimal("1.0000")  # 28 SU / 28 days


def test_the_request_page_shows_the_rate_and_date_the_pi_sees(queue, dana, alice, allocation):
    from django.urls import reverse

    top_up = queue["top_up"]
    forecast = selectors.allocation_forecast(allocation=allocation, today=NOW.date())

    admin_html = " ".join(
        client_as(dana)
        .get(reverse("allocations:review:request", args=[top_up.code]))
        .content.decode()
        .split()
    )
    pi_html = " ".join(
        client_as(alice)
        .get(reverse("allocations:allocation", args=[allocation.code]))
        .content.decode()
        .split()
    )

    assert forecast.burn_rate == Decimal("3.2143")
    assert "<dt>Burn (SU/day)</dt><dd>3.2143</dd>" in admin_html
    assert "over the last 28 days" in admin_html
    exhaustion = f"{forecast.exhaustion:%Y-%m-%d}"
    assert f"the remaining SUs last until {exhaustion}, after the end date" in admin_html
    assert f"At {forecast.burn_rate} SUs a day over the last 28 days" in pi_html
