"""Every review page costs the same number of queries with 2 rows as with 200."""

import datetime as dt
from decimal import Decimal

import pytest
from django.urls import reverse

from allocations import services
from allocations.models import Resource
from tests.conftest import make_user, usage
from tests.review.conftest import client_as, queries_for, request_new_allocations


def url(name: str, *args) -> str:
    return reverse(f"allocations:review:{name}", args=args)


def add_requests(*, alice, dana, project, cluster, gpu, n: int, start: int) -> None:
    """n pending requests, each on its own allocation, half of them on a project with a
    decided request (so the history column has something to count), with usage."""
    for i, request in enumerate(
        request_new_allocations(
            alice=alice, project=project, cluster=cluster, gpu=gpu, n=n, start=start
        )
    ):
        if i % 2:
            services.change_request_approve(actor=dana, request=request)
            services.usage_record_batch(
                cluster=cluster,
                records=[
                    usage(
                        request.allocation,
                        alice,
                        gpu,
                        f"q-{start + i}",
                        "1",
                        when=dt.datetime(2026, 6, 1, tzinfo=dt.UTC),
                    )
                ],
            )
            services.change_request_submit(
                actor=alice, allocation=request.allocation, su_delta="1", justification="x"
            )


# The session, the user, the clusters (for the filter and the nav) with their committed
# budgets, and the page of requests with their figures.
QUEUE_QUERIES = 4


@pytest.mark.parametrize("who", ["dana", "staff"])
def test_the_queue(people, alice, dana, project, cluster, gpu, who):
    client = client_as(people[who])
    add_requests(alice=alice, dana=dana, project=project, cluster=cluster, gpu=gpu, n=2, start=0)
    assert queries_for(client, url("queue")) == QUEUE_QUERIES
    add_requests(alice=alice, dana=dana, project=project, cluster=cluster, gpu=gpu, n=28, start=2)

    assert queries_for(client, url("queue")) == QUEUE_QUERIES
    assert queries_for(client, url("queue") + "?page=2") == QUEUE_QUERIES
    assert queries_for(client, url("queue") + "?max_su=100") == QUEUE_QUERIES
    assert queries_for(client, url("queue") + f"?cluster={cluster.code}") == QUEUE_QUERIES


def test_an_empty_queue_reads_as_many(cluster, dana):
    assert queries_for(client_as(dana), url("queue")) == QUEUE_QUERIES


def test_a_request_with_a_long_project_history(people, alice, dana, project, cluster, gpu):
    add_requests(alice=alice, dana=dana, project=project, cluster=cluster, gpu=gpu, n=2, start=0)
    request = services.change_request_submit(
        actor=alice,
        allocation=project.allocations.get(name="extra-1"),
        su_delta="5",
        justification="x",
    )
    for _ in range(2):
        services.change_request_comment(actor=dana, request=request, text="?")
    client = client_as(dana)
    few = queries_for(client, url("request", request.code))
    add_requests(alice=alice, dana=dana, project=project, cluster=cluster, gpu=gpu, n=198, start=2)

    assert queries_for(client, url("request", request.code)) == few


def test_the_allocation_page_with_many_members(allocation, alice, dana):
    client = client_as(dana)
    page = url("allocation", allocation.code)
    few = queries_for(client, page)
    for i in range(198):
        services.membership_add(
            actor=alice, allocation=allocation, user=make_user(f"m{i}"), su_cap="1"
        )

    assert queries_for(client, page) == few


def test_the_cluster_page_with_many_allocations(people, alice, dana, project, cluster, gpu):
    client = client_as(dana)
    add_requests(alice=alice, dana=dana, project=project, cluster=cluster, gpu=gpu, n=2, start=0)
    few = queries_for(client, url("cluster", cluster.code))
    add_requests(alice=alice, dana=dana, project=project, cluster=cluster, gpu=gpu, n=198, start=2)

    assert queries_for(client, url("cluster", cluster.code)) == few


def test_the_rates_page_with_many_windows(cluster, dana):
    resources = [
        Resource.objects.create(cluster=cluster, name=f"R{i}", kind="CPU", unit="core")
        for i in range(4)
    ]

    def add_windows(n: int, start: int) -> None:
        for i in range(start, start + n):
            services.rate_add(
                actor=dana,
                resource=resources[i % 4],
                su_per_unit_hour=Decimal(i + 1),
                start=dt.datetime(2000, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=i),
                end=dt.datetime(2000, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=i + 1),
            )

    client = client_as(dana)
    add_windows(2, 0)
    few = queries_for(client, url("rates", cluster.code))
    add_windows(198, 2)

    assert queries_for(client, url("rates", cluster.code)) == few


def test_the_capacity_page_with_a_long_history(cluster, dana, alice, project, gpu):
    client = client_as(dana)

    def change(n: int, start: int) -> None:
        for i in range(start, start + n):
            services.cluster_set_capacity(
                actor=dana, cluster=cluster, su_capacity_per_month=1000 + i, reason=f"step {i}"
            )

    change(2, 0)
    add_requests(alice=alice, dana=dana, project=project, cluster=cluster, gpu=gpu, n=2, start=0)
    few = queries_for(client, url("capacity", cluster.code))
    change(198, 2)
    add_requests(alice=alice, dana=dana, project=project, cluster=cluster, gpu=gpu, n=50, start=2)

    assert queries_for(client, url("capacity", cluster.code)) == few
