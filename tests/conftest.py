"""Shared fixtures. Every permission test uses the same three people:
alice (the PI who owns the project), bob (a member of her allocation) and
charlie (an outsider). dana administers the cluster; staff is a site admin."""

import datetime as dt
from decimal import Decimal

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.servers.basehttp import WSGIServer
from django.db import connections
from django.test.testcases import LiveServerThread
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import organization_create, user_create
from allocations import services
from allocations.models import Cluster, Resource

START = dt.date(2026, 1, 1)
END = dt.date(2026, 12, 31)
RATE_START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
# "Now" for tests that freeze the clock: inside the fixtures' 2026 allocation, so they do
# not start failing once the calendar passes its end.
NOW = dt.datetime(2026, 6, 15, 12, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The real hasher is slow by design; tests only need passwords to round-trip.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session", autouse=True)
def _plain_http():
    # Tests run with DEBUG off, which turns on the redirect to https://; the test client
    # and live_server speak plain HTTP. Session-wide, so live_server's middleware (built
    # once, when it starts) sees it too; tests/security/test_hardening.py checks the
    # redirect.
    settings.SECURE_SSL_REDIRECT = False


class _SerialWSGIServer(WSGIServer):
    """The live server's WSGIServer without threads: LiveServerThread hands it the
    connections to share, which its own thread (the only one serving) already uses."""

    def __init__(self, *args, connections_override=None, **kwargs):
        super().__init__(*args, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def _one_request_at_a_time_on_sqlite():
    """On SQLite the test database is in memory and the live server shares the test's
    connection with its request threads (pytest-django passes it over); Django warns
    that queries through it from two threads at once may fail at random, and pages
    that load several charts at once left requests hanging inside SQLite. There the
    live server answers one request at a time (Django then closes each connection after
    its answer); on PostgreSQL each thread has its own connection and stays threaded."""
    if connections["default"].vendor != "sqlite":
        yield
        return
    threaded = LiveServerThread.server_class
    LiveServerThread.server_class = _SerialWSGIServer
    yield
    LiveServerThread.server_class = threaded


@pytest.fixture(autouse=True)
def _fresh_throttles():
    # API throttle counts and lockouts live in the cache, which outlives a test.
    cache.clear()


@pytest.fixture
def org(db):
    return organization_create(name="State University")


def make_user(username: str, org=None, **kwargs):
    return user_create(
        username=username,
        email=f"{username}@example.edu",
        password="pw-" + username * 2,
        organization=org,
        **kwargs,
    )


@pytest.fixture
def alice(org):
    return make_user("alice", org, first_name="Alice", last_name="Archer")


@pytest.fixture
def bob(org):
    return make_user("bob", org, first_name="Bob", last_name="Baker")


@pytest.fixture
def charlie(org):
    return make_user("charlie", org, first_name="Charlie", last_name="Cole")


@pytest.fixture
def dana(org):
    """Admin of the GPU cluster."""
    return make_user("dana", org, first_name="Dana", last_name="Diaz")


@pytest.fixture
def staff(org):
    return make_user("root", org, is_staff=True, is_superuser=True)


@pytest.fixture
def cluster(db, dana):
    cluster = Cluster.objects.create(name="gpu1", title="GPU cluster", su_capacity_per_month=100000)
    cluster.admins.add(dana)
    return cluster


@pytest.fixture
def gpu(cluster):
    resource = Resource.objects.create(
        cluster=cluster, name="GPU H200", kind="GPU", unit="GPU", amount=64
    )
    services.rate_add(
        actor=None, resource=resource, su_per_unit_hour=Decimal("2"), start=RATE_START
    )
    return resource


@pytest.fixture
def cpu(cluster):
    resource = Resource.objects.create(
        cluster=cluster, name="CPU", kind="CPU", unit="core", amount=4096
    )
    services.rate_add(
        actor=None, resource=resource, su_per_unit_hour=Decimal("0.01"), start=RATE_START
    )
    return resource


@pytest.fixture
def project(alice):
    return services.project_create(actor=alice, title="Protein folding", pi=alice)


@pytest.fixture
def pending_request(alice, project, cluster, gpu, cpu):
    return services.allocation_request_create(
        actor=alice,
        project=project,
        cluster=cluster,
        name="folding-gpu",
        resources=[gpu, cpu],
        su_amount="1000",
        start=START,
        end=END,
        justification="Training runs",
    )


@pytest.fixture
def allocation(pending_request, dana, bob, alice):
    """An ACTIVE 1,000 SU allocation with alice (PI, no cap) and bob (cap 300) as members."""
    services.change_request_approve(actor=dana, request=pending_request)
    allocation = pending_request.allocation
    allocation.refresh_from_db()
    services.membership_add(actor=alice, allocation=allocation, user=bob, su_cap="300")
    return allocation


def usage(allocation, user, resource, job_id: str, unit_hours, when=None):
    return services.UsageInput(
        job_id=job_id,
        user=user,
        allocation=allocation,
        resource=resource,
        raw_unit_seconds=Decimal(str(unit_hours)) * 3600,
        charged_at=when or timezone.make_aware(dt.datetime(2026, 3, 1, 12)),
    )


def client_for(user=None, secret=None) -> APIClient:
    """An API client signed in as `user` (a session) or carrying an importer token."""
    client = APIClient()
    if user is not None:
        client.force_login(user)
    if secret is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client
