import datetime as dt

import pytest
from django.utils import timezone

from allocations import services
from tests.conftest import END, START, usage
from tests.portal_pages.conftest import client_as, queries_for


def request_allocations(alice, project, cluster, gpu, n, start=0):
    for i in range(start, start + n):
        services.allocation_request_create(
            actor=alice,
            project=project,
            cluster=cluster,
            name=f"extra-{i}",
            resources=[gpu],
            su_amount="10",
            start=START,
            end=END,
            justification="More runs",
        )


class TestDashboard:
    def test_it_sends_anonymous_visitors_to_sign_in(self, client, db):
        response = client.get("/")
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")

    def test_it_shows_the_pi_their_allocation_and_balance(self, allocation, alice):
        response = client_as(alice).get("/")
        assert response.status_code == 200
        body = response.content.decode()
        assert "folding-gpu" in body
        assert "1,000" in body
        assert f"/allocations/{allocation.code}/" in body
        assert "Request a new allocation" in body

    def test_it_shows_a_member_their_own_usage(self, allocation, bob, gpu):
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, bob, gpu, "1", 10)
        )
        body = client_as(bob).get("/").content.decode()
        assert "folding-gpu" in body
        assert "You used 20 of your 300 cap" in body
        # Members cannot request allocations for a project they do not lead.
        assert "Request a new allocation" not in body

    def test_it_shows_an_outsider_nothing(self, allocation, charlie):
        body = client_as(charlie).get("/").content.decode()
        assert "folding-gpu" not in body
        assert "You have no allocations yet" in body

    def test_it_badges_overdrawn_and_pending(self, allocation, alice, bob, gpu):
        # Usage is a fact: 600 GPU-hours at 2 SU is 1,200 SU of a 1,000 SU budget.
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, alice, gpu, "big", 600)
        )
        services.change_request_submit(
            actor=alice, allocation=allocation, su_delta="500", justification="Overdrawn"
        )
        body = client_as(alice).get("/").content.decode()
        assert "Overdrawn" in body
        assert "Request pending" in body

    def test_it_badges_near_the_limit_and_expiring_soon(self, allocation, alice, gpu, monkeypatch):
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, alice, gpu, "j", 460)
        )
        monkeypatch.setattr(timezone, "localdate", lambda: END - dt.timedelta(days=10))
        body = client_as(alice).get("/").content.decode()
        assert "Near the limit" in body
        assert "Expiring soon" in body
        assert "Overdrawn" not in body

    def test_its_query_count_does_not_grow_with_rows(self, alice, project, cluster, gpu):
        request_allocations(alice, project, cluster, gpu, 2)
        client = client_as(alice)
        few = queries_for(client, "/")
        request_allocations(alice, project, cluster, gpu, 198, start=2)
        assert queries_for(client, "/") == few


@pytest.mark.parametrize("page", ["2", "999", "junk"])
def test_it_paginates_and_tolerates_bad_page_numbers(alice, project, cluster, gpu, page):
    request_allocations(alice, project, cluster, gpu, 30)
    response = client_as(alice).get(f"/?page={page}")
    assert response.status_code == 200
    assert "Page " in response.content.decode()
