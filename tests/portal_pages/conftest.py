import datetime as dt

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from allocations import services
from tests.conftest import make_user, usage


def client_as(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def queries_for(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
        assert response.status_code == 200, response.status_code
    return len(ctx.captured_queries)


def add_rows(allocation, *, alice, dana, gpu, n: int, start: int = 0) -> None:
    """n more of every list a page shows: members, jobs, requests with events, diffs."""
    users = [make_user(f"m{start + i}") for i in range(n)]
    records = []
    for i, user in enumerate(users):
        services.membership_add(actor=alice, allocation=allocation, user=user, su_cap="1")
        records.append(
            usage(
                allocation,
                user,
                gpu,
                f"job-{start + i}",
                "0.1",
                when=dt.datetime(2026, 3, 1 + i % 28, 12, tzinfo=dt.UTC),
            )
        )
        request = services.change_request_submit(
            actor=alice, allocation=allocation, su_delta="1", justification="more"
        )
        services.change_request_comment(actor=dana, request=request, text="why?")
        services.change_request_approve(actor=dana, request=request)
    services.usage_record_batch(cluster=allocation.cluster, records=records)


@pytest.fixture
def pages(allocation):
    code = allocation.code
    return {
        "overview": f"/allocations/{code}/",
        "jobs": f"/allocations/{code}/jobs/",
        "members": f"/allocations/{code}/members/",
        "requests": f"/allocations/{code}/requests/",
        "history": f"/allocations/{code}/history/",
        "change-request": f"/allocations/{code}/requests/new/",
    }
