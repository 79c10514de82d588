from accounts.tokens import api_token_issue
from tests.conftest import client_for
from tests.portal_pages.conftest import client_as, queries_for


class TestApiPing:
    def test_it_answers_a_signed_in_user(self, charlie):
        response = client_for(charlie).get("/api/v1/ping/")
        assert response.status_code == 200
        assert response.json() == {"ok": True}

    def test_it_answers_an_importer_token(self, cluster, dana):
        token = api_token_issue(actor=dana, cluster=cluster, name="importer")
        response = client_for(secret=token.secret).get("/api/v1/ping/")
        assert response.status_code == 200
        assert response.json() == {"ok": True}

    def test_it_refuses_anonymous_callers(self, db):
        assert client_for().get("/api/v1/ping/").status_code in (401, 403)

    def test_it_refuses_a_wrong_token(self, db):
        assert client_for(secret="not-a-token").get("/api/v1/ping/").status_code in (401, 403)

    def test_it_is_read_only(self, charlie):
        assert client_for(charlie).post("/api/v1/ping/").status_code == 405


class TestPagePing:
    def test_it_renders_the_layout_for_a_signed_in_user(self, charlie):
        response = client_as(charlie).get("/ping/")
        assert response.status_code == 200
        assert "portal/base.html" in [t.name for t in response.templates]
        assert "<p>ok</p>" in response.content.decode()

    def test_it_sends_anonymous_visitors_to_sign_in(self, db):
        response = client_as(None).get("/ping/")
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")

    def test_its_query_count_is_what_every_page_pays(self, charlie, alice):
        # The session and its user; nothing of the page's own.
        assert queries_for(client_as(charlie), "/ping/") == queries_for(client_as(alice), "/ping/")
