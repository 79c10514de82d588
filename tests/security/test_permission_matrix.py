"""Every route, every role, on objects inside and outside the role's scope.

The routes come from the URL resolver, not from a list kept by hand: a route the
matrix (tests/security/matrix.py) does not name fails test_every_route_is_listed, so
pages and endpoints added later arrive with their row. docs/permissions.md is the
same matrix for people."""

import re

import pytest
from django.apps import apps
from django.contrib import admin
from django.urls import URLResolver, get_resolver, reverse
from rest_framework.test import APIClient

from tests.security import matrix
from tests.security.world import (
    ANONYMOUS,
    IMPORTER,
    MINE,
    ROLES,
    THEIRS,
    build_world,
)

_LEGACY = re.compile(r"^admin/(?P<app>\w+)/(?P<model>\w+)/<path:object_id>/$")


def _walk(patterns, prefix="", namespace=None):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = ":".join(n for n in (namespace, pattern.namespace) if n) or None
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern), inner)
        else:
            yield namespace, pattern.name, prefix + str(pattern.pattern)


def _admin_models() -> dict[str, str]:
    """admin URL name prefix ("allocations_allocation_") -> model label."""
    return {
        f"{model._meta.app_label}_{model._meta.model_name}_": model._meta.label_lower
        for model in admin.site._registry
    }


def discovered() -> tuple[set[str], dict[str, set[str]]]:
    """Routes outside the admin's model pages (by name, or pattern when unnamed), and
    the admin's model pages as {model label: {view, ...}}."""
    routes: set[str] = set()
    admin_views: dict[str, set[str]] = {}
    prefixes = _admin_models()
    for namespace, name, pattern in _walk(get_resolver().url_patterns):
        if namespace == "admin":
            prefix = next((p for p in prefixes if name and name.startswith(p)), None)
            if prefix is not None:
                admin_views.setdefault(prefixes[prefix], set()).add(name[len(prefix) :])
                continue
            legacy = _LEGACY.match(pattern)
            if name is None and legacy:
                label = f"{legacy['app']}.{legacy['model']}"
                admin_views.setdefault(label, set()).add("legacy")
                continue
        if name is None:
            routes.add(pattern)
        else:
            routes.add(f"{namespace}:{name}" if namespace else name)
    return routes, admin_views


def test_every_route_is_listed():
    routes, admin_views = discovered()
    listed = set(matrix.API) | set(matrix.PAGES)
    missing = sorted(routes - listed)
    assert not missing, f"routes with no row in tests/security/matrix.py: {missing}"
    stale = sorted(r for r in listed if r not in routes)
    assert not stale, f"rows for routes that no longer exist: {stale}"
    unlisted = sorted(set(admin_views) - set(matrix.ADMIN))
    assert not unlisted, f"admin models with no row in matrix.ADMIN: {unlisted}"
    for label, views in admin_views.items():
        known = {*matrix.STANDARD_ADMIN_VIEWS, "legacy", *matrix.ADMIN[label].extra}
        assert views <= known, f"{label}: admin views with no rule: {views - known}"


@pytest.fixture
def world(settings, tmp_path, staff, alice, bob, charlie, dana, allocation, gpu):
    settings.MEDIA_ROOT = tmp_path / "media"  # the world's uploaded imports
    return build_world(
        staff=staff,
        alice=alice,
        bob=bob,
        charlie=charlie,
        dana=dana,
        allocation=allocation,
        gpu=gpu,
    )


def client_as(world, role: str) -> APIClient:
    client = APIClient()
    if role == IMPORTER:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.a.secret}")
    elif role != ANONYMOUS:
        client.force_login(world.users[role])
    return client


def _expected(table: dict, role: str, scope: str) -> str:
    value = table[role]
    return value[scope] if isinstance(value, dict) else value


def check(response, expected: str, *, mine_id=None, theirs_id=None) -> str | None:
    """None if the response is what the matrix says, else what went wrong."""
    status, _, detail = expected.partition(" ")
    if response.status_code != int(status):
        return f"got {response.status_code}, expected {expected}"
    if detail.startswith("to:"):
        where = {
            "login": reverse("admin:login"),
            "admin": reverse("admin:index"),
            "signin": reverse("login"),
        }[detail[3:]]
        if not response["Location"].startswith(where):
            return f"redirected to {response['Location']}, expected {where}"
    if detail.startswith("sees:"):
        body = response.content.decode()
        seen = {"mine": str(mine_id) in body, "theirs": str(theirs_id) in body}
        want = {
            "mine": detail in ("sees:mine", "sees:both"),
            "theirs": detail == "sees:both",
        }
        if seen != want:
            return f"list shows {seen}, expected {want}"
    return None


def _run(world, role, scope, method, url, body=None, fmt="json"):
    client = client_as(world, role)
    kwargs = {"format": fmt} if body is not None else {}
    return getattr(client, method.lower())(url, body, **kwargs)


@pytest.mark.parametrize("route", sorted({**matrix.API, **matrix.PAGES}))
def test_route(world, route):
    failures = []
    for call in {**matrix.API, **matrix.PAGES}[route]:
        for role in ROLES:
            for scope in (MINE, THEIRS):
                expected = _expected(call.expect, role, scope)
                url = call.path(world, scope)
                body = call.body(world, scope) if call.body else None
                response = _run(world, role, scope, call.method, url, body, call.format)
                ids = {}
                if call.list_ids:
                    ids = {
                        "mine_id": call.list_ids(world, MINE),
                        "theirs_id": call.list_ids(world, THEIRS),
                    }
                wrong = check(response, expected, **ids)
                if wrong:
                    failures.append(f"{call.method} {url} as {role} ({scope}): {wrong}")
    assert not failures, "\n".join(failures)


def _admin_url(label: str, view: str, row) -> str:
    if view == "legacy":
        app, model = label.split(".")
        return f"/admin/{app}/{model}/{row.pk}/"
    name = f"admin:{label.replace('.', '_')}_{view}"
    if view in ("changelist", "add"):
        return reverse(name)
    return reverse(name, args=[row.pk])


@pytest.mark.parametrize("label", sorted(matrix.ADMIN))
def test_admin_model(world, label):
    entry = matrix.ADMIN[label]
    model = apps.get_model(label)
    _, admin_views = discovered()
    failures = []
    for view in sorted(admin_views[label]):
        for role in ROLES:
            for scope in (MINE, THEIRS):
                row = world.side(scope).row(model)
                assert row is not None, f"the world has no {label} row"
                if view == "legacy":
                    expected = "302"  # a redirect to the change page, which then decides
                elif view in entry.extra:
                    expected = _expected(entry.extra[view], role, scope)
                else:
                    expected = matrix.admin_expectation(entry, view, role, scope)
                url = _admin_url(label, view, row)
                wrong = check(_run(world, role, scope, "GET", url), expected)
                if wrong:
                    failures.append(f"GET {url} ({view}) as {role} ({scope}): {wrong}")
    assert not failures, "\n".join(failures)
