"""The figures each queue row shows, on a small fixture: usage and percent of the budget,
burn rate, the project's earlier requests, and the cluster's commitment now and if
approved. They are the figures the request page computes (selectors.burn_rates and
commitments_for_requests), whatever the database."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from allocations import selectors, services
from allocations.models import ChangeRequest, UsageAdjustment
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
def queue(allocation, alice, bob, dana, gpu, cluster, monkeypatch):
    """1,000 SU over 2026 on a cluster of 100 SU a month; 190 SU charged, 60 of them net
    of a refund in the last 30 days; one approved, one rejected and one cancelled request
    before three pending ones (a top-up, a freeze with a new end, a new allocation next
    year)."""
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    cluster.su_capacity_per_month = Decimal(100)
    cluster.save()
    charge(allocation, bob, gpu, "old", 50, NOW - dt.timedelta(days=31))  # 100 SU, outside
    charge(allocation, bob, gpu, "a", 15, NOW - dt.timedelta(days=29))  # 30 SU
    charge(allocation, bob, gpu, "b", 30, NOW - dt.timedelta(days=1))  # 60 SU
    UsageAdjustment.objects.create(
        usage=allocation.usage.get(job_id="b"),
        allocation=allocation,
        user=bob,
        kind="REFUND",
        su_delta=Decimal("-30"),
        reason="Node failure",
    )
    # Made an hour before "now" (created is set on insert, to the real clock).
    UsageAdjustment.objects.filter(kind="REFUND").update(created=NOW - dt.timedelta(hours=1))
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
    burn = selectors.burn_rates(allocations=[r.allocation for r in requests], now=NOW)
    commitments = selectors.commitments_for_requests(requests=requests, today=NOW.date())
    assert set(rows) == {r.code for r in requests}
    for request in requests:
        row = rows[request.code]
        assert row["burn_rate"] == burn[request.allocation_id]
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
    assert top_up["burn_rate"] == Decimal("2.0000")  # (30 + 60 - 30) / 30 days
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
    assert '<td class="num">2</td>' in html
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


@given(seconds=st.integers(min_value=-3600, max_value=3 * 366 * 86400))
def test_the_ages_read_as_timesince_writes_them(seconds):
    from django.utils.timesince import timesince

    from allocations.review_views import _TIME_STRINGS

    now = dt.datetime(2026, 11, 24, 6, 30, tzinfo=dt.UTC)
    created = now - dt.timedelta(seconds=seconds)
    assert timesince(created, now, time_strings=_TIME_STRINGS) == timesince(created, now)
