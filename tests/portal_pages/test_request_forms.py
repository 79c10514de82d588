from decimal import Decimal

import pytest

from allocations import services
from allocations.models import Allocation, ChangeRequest
from tests.portal_pages.conftest import client_as


def new_allocation_data(project, cluster, *resources, **overrides):
    data = {
        "project": str(project.code),
        "cluster": str(cluster.code),
        "name": "folding-cpu",
        "resources": [str(r.code) for r in resources],
        "su_amount": "500",
        "start": "2026-02-01",
        "end": "2026-11-30",
        "justification": "Sampling",
        "priority": "2",
    }
    data.update(overrides)
    return data


class TestNewAllocationRequest:
    url = "/allocations/request/"

    def test_the_pi_requests_an_allocation(self, alice, project, cluster, cpu):
        response = client_as(alice).post(self.url, new_allocation_data(project, cluster, cpu))
        allocation = Allocation.objects.get(name="folding-cpu")
        assert response.status_code == 302
        assert response["Location"] == f"/allocations/{allocation.code}/requests/"
        request = allocation.change_requests.get()
        assert request.su_delta == Decimal(500)
        assert request.state == "PENDING"
        assert allocation.status == "INACTIVE"

    def test_errors_show_beside_their_fields_and_keep_the_input(self, alice, project, cluster, cpu):
        data = new_allocation_data(
            project, cluster, cpu, su_amount="1.00001", end="2026-01-01", justification=""
        )
        response = client_as(alice).post(self.url, data)
        assert response.status_code == 200
        form = response.context["form"]
        assert "su_amount" in form.errors
        assert "end" in form.errors
        assert "justification" in form.errors
        body = response.content.decode()
        assert 'aria-invalid="true"' in body
        assert 'value="folding-cpu"' in body
        assert not Allocation.objects.filter(name="folding-cpu").exists()

    def test_a_service_refusal_lands_on_its_field(self, alice, project, cluster, cpu, allocation):
        data = new_allocation_data(project, cluster, cpu, name="folding-gpu")
        response = client_as(alice).post(self.url, data)
        assert response.status_code == 200
        assert response.context["form"].errors

    def test_a_member_without_a_project_is_refused(self, bob, allocation):
        assert client_as(bob).get(self.url).status_code == 403

    def test_an_outsider_is_refused(self, charlie, db):
        assert client_as(charlie).get(self.url).status_code == 403

    def test_another_pis_project_cannot_be_chosen(self, alice, charlie, cluster, cpu):
        theirs = services.project_create(actor=charlie, title="Theirs", pi=charlie)
        services.project_create(actor=alice, title="Mine", pi=alice)
        response = client_as(alice).post(self.url, new_allocation_data(theirs, cluster, cpu))
        assert "project" in response.context["form"].errors


class TestChangeRequest:
    def url(self, allocation):
        return f"/allocations/{allocation.code}/requests/new/"

    def test_the_pi_asks_for_more_sus(self, allocation, alice):
        response = client_as(alice).post(
            self.url(allocation), {"su_delta": "250", "justification": "More", "priority": "3"}
        )
        assert response.status_code == 302
        request = allocation.change_requests.get(state="PENDING")
        assert (request.su_delta, request.priority) == (Decimal(250), 3)

    def test_it_asks_for_something(self, allocation, alice):
        response = client_as(alice).post(
            self.url(allocation), {"justification": "Nothing", "priority": "2"}
        )
        assert response.status_code == 200
        assert "Ask for SUs, a new end date or a new status." in response.content.decode()

    def test_giving_back_more_than_is_unused_is_refused_beside_the_field(self, allocation, alice):
        response = client_as(alice).post(
            self.url(allocation), {"su_delta": "-5000", "justification": "Less", "priority": "2"}
        )
        assert "su_delta" in response.context["form"].errors

    def test_a_member_may_not_request(self, allocation, bob):
        response = client_as(bob).post(
            self.url(allocation), {"su_delta": "1", "justification": "x", "priority": "2"}
        )
        assert response.status_code == 403
        assert not allocation.change_requests.filter(state="PENDING").exists()


@pytest.fixture
def open_request(allocation, alice):
    return services.change_request_submit(
        actor=alice, allocation=allocation, su_delta="100", justification="More"
    )


class TestCommentAndCancel:
    def test_the_pi_comments(self, open_request, alice):
        response = client_as(alice).post(
            f"/requests/{open_request.code}/comment/", {"text": "Runs start Monday"}
        )
        assert response.status_code == 302
        assert open_request.events.filter(kind="COMMENTED", text="Runs start Monday").exists()

    def test_an_empty_comment_is_shown_as_an_error(self, open_request, alice):
        response = client_as(alice).post(f"/requests/{open_request.code}/comment/", {"text": ""})
        assert response.status_code == 400
        assert "text" in response.context["form"].errors

    def test_the_pi_cancels(self, open_request, alice):
        response = client_as(alice).post(
            f"/requests/{open_request.code}/cancel/", {"reason": "Not needed"}
        )
        assert response.status_code == 302
        open_request.refresh_from_db()
        assert open_request.state == ChangeRequest.State.CANCELLED

    def test_a_decided_request_cannot_be_cancelled(self, open_request, alice, dana):
        services.change_request_reject(actor=dana, request=open_request, reason="No")
        response = client_as(alice).post(f"/requests/{open_request.code}/cancel/", {})
        assert response.status_code == 400
        assert "already rejected" in response.content.decode()

    @pytest.mark.parametrize("action", ["comment", "cancel"])
    def test_a_member_is_refused(self, open_request, bob, action):
        response = client_as(bob).post(f"/requests/{open_request.code}/{action}/", {"text": "x"})
        assert response.status_code == 403
        assert open_request.events.count() == 1

    @pytest.mark.parametrize("action", ["comment", "cancel"])
    def test_an_outsider_gets_not_found(self, open_request, charlie, action):
        response = client_as(charlie).post(
            f"/requests/{open_request.code}/{action}/", {"text": "x"}
        )
        assert response.status_code == 404

    def test_get_is_not_allowed(self, open_request, alice):
        assert client_as(alice).get(f"/requests/{open_request.code}/cancel/").status_code == 405
