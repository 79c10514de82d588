"""Fixtures of the review pages: besides alice (PI), bob (member), charlie (outsider),
dana (admin of the `cluster`) and staff (superuser), eve administers another cluster."""

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from allocations import services
from allocations.models import Cluster
from tests.conftest import END, START, make_user


@pytest.fixture
def eve(org):
    return make_user("eve", org, first_name="Eve", last_name="Evans")


@pytest.fixture
def other_cluster(db, eve):
    cluster = Cluster.objects.create(name="cpu9", title="Another cluster")
    cluster.admins.add(eve)
    return cluster


@pytest.fixture
def people(alice, bob, charlie, dana, eve, staff, other_cluster):
    return {
        "alice": alice,
        "bob": bob,
        "charlie": charlie,
        "dana": dana,
        "eve": eve,
        "staff": staff,
    }


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


def request_new_allocations(*, alice, project, cluster, gpu, n: int, start: int = 0) -> list:
    """n pending new-allocation requests on alice's project."""
    return [
        services.allocation_request_create(
            actor=alice,
            project=project,
            cluster=cluster,
            name=f"extra-{start + i}",
            resources=[gpu],
            su_amount=str(10 + i),
            start=START,
            end=END,
            justification="More runs",
        )
        for i in range(n)
    ]
