"""The charts draw in a real browser under the Content-Security-Policy: plotly.js from our
own static files, figures from the chart endpoints, no inline script or style refused."""

import pytest
from playwright.sync_api import expect

from allocations import services
from allocations.rollups import rollups_refresh_all
from tests.browser.conftest import sign_in
from tests.conftest import NOW, usage


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    from django.utils import timezone

    monkeypatch.setattr(timezone, "now", lambda: NOW)


@pytest.fixture
def charged(allocation, alice, bob, gpu):
    services.usage_record_batch(
        cluster=allocation.cluster,
        records=[
            usage(allocation, alice, gpu, "j1", 10),
            usage(allocation, bob, gpu, "j2", 5),
        ],
    )
    rollups_refresh_all(allocation_ids=[allocation.pk])
    return allocation


def watch(page) -> list[str]:
    """Console errors (a CSP refusal is one) and failed requests, as they happen."""
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on(
        "response",
        lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    return problems


def expect_charts_drawn(page, count: int) -> None:
    charts = page.locator("figure.chart")
    expect(charts).to_have_count(count)
    for i in range(count):
        # plotly draws an SVG; the status line goes once the figure is in.
        expect(charts.nth(i).locator("svg.main-svg").first).to_be_visible()
        expect(charts.nth(i).locator(".chart-status")).to_have_count(0)


def test_the_pi_sees_every_chart_of_an_allocation_and_its_project(new_page, charged, alice):
    page = new_page()
    problems = watch(page)
    sign_in(page, alice)

    page.goto(f"/allocations/{charged.code}/")
    expect(page.locator("#burn-down svg.main-svg").first).to_be_visible()
    # The burn-down, then the usage by member and by resource.
    expect_charts_drawn(page, 3)

    page.goto(f"/projects/{charged.project.code}/")
    expect_charts_drawn(page, 1)
    assert problems == [], "\n".join(problems)


def test_a_cluster_admin_sees_the_cluster_charts(new_page, charged, dana):
    page = new_page()
    problems = watch(page)
    sign_in(page, dana)

    page.goto(f"/review/clusters/{charged.cluster.code}/")
    expect_charts_drawn(page, 3)
    assert problems == [], "\n".join(problems)
