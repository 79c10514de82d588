"""Transport and browser hardening: the CSP (and the admin working under it), HTTPS
settings with DEBUG off, check --deploy, CSRF on sessions, API throttles, and tokens
kept out of URLs and logs."""

import logging
import re

import pytest
from django.core.management import call_command
from django.http import HttpResponse
from django.test import RequestFactory
from django.urls import reverse
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from accounts.tokens import api_token_issue
from tests.conftest import client_for

SCRIPT_TAG = re.compile(r"<script\b([^>]*)>", re.IGNORECASE)


def csp_of(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {part.split()[0]: part.split()[1:] for part in header.split(";") if part.strip()}


class TestContentSecurityPolicy:
    @pytest.mark.parametrize(
        "url",
        [
            "admin:login",
            "admin:index",
            "admin:allocations_allocation_changelist",
            "admin:allocations_allocation_add",
            "admin:allocations_changerequest_changelist",
            "admin:accounts_user_changelist",
            "admin:accounts_auditevent_changelist",
        ],
    )
    def test_admin_pages_render_under_the_policy(self, client, staff, allocation, url):
        if url != "admin:login":
            client.force_login(staff)
        response = client.get(reverse(url))

        assert response.status_code == 200
        policy = csp_of(response)
        assert policy["script-src"][0] == "'self'"
        assert policy["style-src"][0] == "'self'"
        assert "'unsafe-inline'" not in response["Content-Security-Policy"]
        assert "'unsafe-eval'" not in response["Content-Security-Policy"]
        assert policy["frame-ancestors"] == ["'none'"]
        # No inline script would run: every <script> loads a file from this site or is
        # JSON data (which browsers do not execute).
        for attributes in SCRIPT_TAG.findall(response.content.decode()):
            assert "src=" in attributes or 'type="application/json"' in attributes, attributes
            assert "http" not in attributes  # nothing from another origin

    def test_a_page_that_uses_the_nonce_gets_it_in_the_header(self):
        from csp.middleware import CSPMiddleware

        seen = {}

        def view(request):
            seen["nonce"] = str(request.csp_nonce)
            return HttpResponse(f'<script nonce="{seen["nonce"]}">go()</script>')

        response = CSPMiddleware(view)(RequestFactory().get("/"))

        assert f"'nonce-{seen['nonce']}'" in csp_of(response)["script-src"]

    def test_a_page_that_does_not_use_it_gets_no_nonce(self, client, db):
        assert "nonce-" not in client.get(reverse("admin:login"))["Content-Security-Policy"]


class TestHttps:
    def test_production_defaults(self, settings):
        # Tests run with DEBUG off, as production does.
        assert settings.SESSION_COOKIE_SECURE and settings.CSRF_COOKIE_SECURE
        assert settings.SESSION_COOKIE_HTTPONLY
        assert settings.SECURE_HSTS_SECONDS == 365 * 24 * 3600
        assert settings.SECURE_HSTS_INCLUDE_SUBDOMAINS

    def test_plain_http_is_redirected_and_https_gets_hsts(self, client, settings, db):
        settings.SECURE_SSL_REDIRECT = True
        plain = client.get("/admin/login/")
        secure = client.get("/admin/login/", secure=True)

        assert (plain.status_code, plain["Location"]) == (301, "https://testserver/admin/login/")
        assert secure["Strict-Transport-Security"].startswith("max-age=31536000")
        assert secure["X-Content-Type-Options"] == "nosniff"
        assert secure["X-Frame-Options"] == "DENY"

    def test_a_proxy_header_marks_requests_secure_when_configured(self, client, settings, db):
        settings.SECURE_SSL_REDIRECT = True
        settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
        response = client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https")
        assert response.status_code == 200

    def test_check_deploy_is_clean_with_production_settings(self, settings, db, monkeypatch):
        # The browser tests' conftest sets it for Playwright's event loop; production never.
        monkeypatch.delenv("DJANGO_ALLOW_ASYNC_UNSAFE", raising=False)
        settings.SECURE_SSL_REDIRECT = True
        settings.SECRET_KEY = "k" * 20 + "0123456789abcdefghijklmnopqrstuvwxyz"
        settings.ALLOWED_HOSTS = ["portal.example.edu"]
        settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/0"
        call_command("check", deploy=True, fail_level="WARNING")


class TestSessions:
    def test_a_session_post_without_the_csrf_token_is_refused(self, allocation, dana):
        client = APIClient(enforce_csrf_checks=True)
        client.force_login(dana)
        response = client.post(
            "/api/v1/refunds/", {"cluster": "gpu1", "job_id": "1", "reason": "x"}, format="json"
        )
        assert response.status_code == 403
        assert "CSRF" in response.json()["detail"]

    def test_a_token_needs_no_csrf_token(self, allocation, dana):
        secret = api_token_issue(actor=dana, cluster=allocation.cluster, name="i").secret
        client = APIClient(enforce_csrf_checks=True)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        response = client.post(
            "/api/v1/usage/", {"cluster": "gpu1", "records": [{"job_id": "1"}]}, format="json"
        )
        assert response.status_code == 400  # judged on its records, not refused as forged


class TestTokensStayOutOfUrlsAndLogs:
    def test_a_token_in_the_query_string_is_not_accepted(self, allocation, dana):
        secret = api_token_issue(actor=dana, cluster=allocation.cluster, name="i").secret
        for param in ("token", "access_token", "auth", "key"):
            response = APIClient().get(f"/api/v1/allocations/?{param}={secret}")
            assert response.status_code == 401

    def test_a_refused_token_is_not_logged(self, allocation, dana, caplog):
        secret = api_token_issue(actor=dana, cluster=allocation.cluster, name="i").secret
        wrong = secret[:-4] + "abcd"
        with caplog.at_level(logging.DEBUG):
            response = client_for(secret=wrong).get("/api/v1/allocations/")
        assert response.status_code == 401
        assert secret[12:] not in caplog.text and wrong[12:] not in caplog.text


class TestThrottles:
    @pytest.fixture
    def low_rates(self, monkeypatch):
        monkeypatch.setattr(
            SimpleRateThrottle,
            "THROTTLE_RATES",
            {"importer": "3/minute", "user": "3/minute"},
        )

    def test_each_token_has_its_own_count_and_429_says_when(self, low_rates, allocation, dana):
        first = client_for(
            secret=api_token_issue(actor=dana, cluster=allocation.cluster, name="a").secret
        )
        second = client_for(
            secret=api_token_issue(actor=dana, cluster=allocation.cluster, name="b").secret
        )
        answers = [first.get("/api/v1/allocations/").status_code for _ in range(4)]
        refused = first.get("/api/v1/allocations/")

        assert answers == [200, 200, 200, 429]
        assert 0 < int(refused["Retry-After"]) <= 60
        assert "throttled" in refused.json()["detail"].lower()
        assert second.get("/api/v1/allocations/").status_code == 200

    def test_each_user_has_their_own_count(self, low_rates, allocation, alice, bob):
        alice_client, bob_client = client_for(alice), client_for(bob)
        assert [alice_client.get("/api/v1/allocations/").status_code for _ in range(4)] == [
            200,
            200,
            200,
            429,
        ]
        assert bob_client.get("/api/v1/allocations/").status_code == 200
