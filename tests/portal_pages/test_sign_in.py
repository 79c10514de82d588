from allocations import services
from allocations.models import Resource
from tests.portal_pages.conftest import client_as, queries_for


class TestSignIn:
    def test_a_pi_signs_in_and_lands_on_the_dashboard(self, client, alice):
        response = client.post(
            "/accounts/login/", {"username": "alice", "password": "pw-alicealice"}
        )
        assert response.status_code == 302
        assert response["Location"] == "/"

    def test_a_wrong_password_is_refused_with_a_message(self, client, alice):
        response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
        assert response.status_code == 200
        assert "Please enter a correct username and password" in response.content.decode()
        assert "_auth_user_id" not in client.session

    def test_sign_out_is_a_post(self, alice):
        client = client_as(alice)
        assert client.get("/accounts/logout/").status_code == 405
        assert client.post("/accounts/logout/").status_code == 200
        assert "_auth_user_id" not in client.session


class TestNav:
    def test_cluster_admins_and_superusers_see_the_review_link(self, cluster, dana, staff):
        for user in (dana, staff):
            assert "/review/" in client_as(user).get("/").content.decode()

    def test_pis_and_members_do_not(self, allocation, alice, bob):
        for user in (alice, bob):
            assert 'href="/review/"' not in client_as(user).get("/").content.decode()

    def test_only_staff_see_the_admin_link(self, allocation, alice, staff):
        assert 'href="/admin/"' not in client_as(alice).get("/").content.decode()
        assert 'href="/admin/"' in client_as(staff).get("/").content.decode()


class TestProjectManagers:
    def test_a_named_manager_has_the_pis_rights(self, allocation, project, alice, charlie):
        services.project_add_manager(actor=alice, project=project, user=charlie)
        client = client_as(charlie)
        assert client.get(f"/allocations/{allocation.code}/members/").status_code == 200
        response = client.post(
            f"/allocations/{allocation.code}/requests/new/",
            {"su_delta": "10", "justification": "co-PI asks", "priority": "2"},
        )
        assert response.status_code == 302
        assert allocation.change_requests.filter(requester=charlie, state="PENDING").exists()


def test_the_request_form_keeps_its_query_count(alice, cluster, gpu, cpu):
    def grow(n, start):
        for i in range(start, start + n):
            services.project_create(actor=alice, title=f"P{i}", pi=alice)
            Resource.objects.create(cluster=cluster, name=f"R{i}", kind="CPU", unit="core")

    client = client_as(alice)
    grow(2, 0)
    few = queries_for(client, "/allocations/request/")
    grow(198, 2)
    assert queries_for(client, "/allocations/request/") == few
