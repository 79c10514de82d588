import pytest

from allocations import services
from tests.portal_pages.conftest import client_as, queries_for


class TestProjectPage:
    def url(self, project, rest=""):
        return f"/projects/{project.code}/{rest}"

    def test_the_pi_sees_allocations_and_managers(self, project, allocation, alice):
        body = client_as(alice).get(self.url(project)).content.decode()
        assert "folding-gpu" in body
        assert "Name as manager" in body

    @pytest.mark.parametrize(
        ("user", "status"), [("bob", 403), ("charlie", 404)], ids=["member", "outsider"]
    )
    def test_others_are_refused(self, project, allocation, request, user, status):
        client = client_as(request.getfixturevalue(user))
        assert client.get(self.url(project)).status_code == status
        response = client.post(self.url(project, "managers/add/"), {"user": "charlie"})
        assert response.status_code == status
        assert not project.managers.exists()

    def test_the_pi_names_and_removes_a_manager(self, project, alice, charlie):
        client = client_as(alice)
        response = client.post(self.url(project, "managers/add/"), {"user": "charlie@example.edu"})
        assert response.status_code == 302
        assert list(project.managers.all()) == [charlie]
        response = client.post(self.url(project, "managers/remove/"), {"user": "charlie"})
        assert response.status_code == 302
        assert not project.managers.exists()

    def test_a_manager_sees_the_page_but_cannot_name_others(self, project, alice, bob, charlie):
        services.project_add_manager(actor=alice, project=project, user=bob)
        client = client_as(bob)
        assert "Name as manager" not in client.get(self.url(project)).content.decode()
        response = client.post(self.url(project, "managers/add/"), {"user": "charlie"})
        assert response.status_code == 400
        assert "Only the PI may name managers." in response.content.decode()
        assert list(project.managers.all()) == [bob]

    def test_naming_the_pi_is_an_error_beside_the_field(self, project, alice):
        response = client_as(alice).post(self.url(project, "managers/add/"), {"user": "alice"})
        assert response.status_code == 400
        assert "already manages" in response.content.decode()

    def test_its_query_count_does_not_grow(self, project, alice, cluster, gpu):
        client = client_as(alice)

        def grow(n, start):
            for i in range(start, start + n):
                services.allocation_request_create(
                    actor=alice, project=project, cluster=cluster, name=f"a{i}",
                    resources=[gpu], su_amount="1", start=project.created.date(),
                    end=project.created.date(), justification="x",
                )  # fmt: skip

        grow(2, 0)
        few = queries_for(client, self.url(project))
        grow(198, 2)
        assert queries_for(client, self.url(project)) == few
