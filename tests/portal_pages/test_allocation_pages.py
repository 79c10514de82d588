import pytest

from allocations import services
from tests.conftest import usage
from tests.portal_pages.conftest import add_rows, client_as, queries_for

ALL_PAGES = ["overview", "jobs", "members", "requests", "history", "change-request"]
MEMBER_PAGES = ["overview", "jobs"]


class TestWhoSeesWhat:
    @pytest.mark.parametrize("name", ALL_PAGES)
    def test_the_pi_sees_every_page(self, pages, alice, name):
        assert client_as(alice).get(pages[name]).status_code == 200

    @pytest.mark.parametrize("name", MEMBER_PAGES)
    def test_a_member_sees_the_balance_and_their_jobs(self, pages, bob, name):
        assert client_as(bob).get(pages[name]).status_code == 200

    @pytest.mark.parametrize("name", sorted(set(ALL_PAGES) - set(MEMBER_PAGES)))
    def test_a_member_is_refused_the_rest(self, pages, bob, name):
        assert client_as(bob).get(pages[name]).status_code == 403

    @pytest.mark.parametrize("name", ALL_PAGES)
    def test_an_outsider_gets_not_found(self, pages, charlie, name):
        assert client_as(charlie).get(pages[name]).status_code == 404

    @pytest.mark.parametrize("name", ALL_PAGES)
    def test_anonymous_visitors_are_sent_to_sign_in(self, pages, client, name):
        response = client.get(pages[name])
        assert response.status_code == 302
        assert "/accounts/login/" in response["Location"]

    @pytest.mark.parametrize("name", ["overview", "jobs", "members", "requests", "history"])
    def test_the_cluster_admin_sees_the_allocation(self, pages, dana, name):
        assert client_as(dana).get(pages[name]).status_code == 200

    def test_a_removed_member_no_longer_sees_it(self, pages, allocation, alice, bob):
        membership = allocation.memberships.get(user=bob)
        services.membership_remove(actor=alice, membership=membership)
        assert client_as(bob).get(pages["overview"]).status_code == 404

    def test_a_frozen_member_still_sees_why(self, pages, allocation, alice, bob):
        membership = allocation.memberships.get(user=bob)
        services.membership_set_status(actor=alice, membership=membership, status="INACTIVE")
        body = client_as(bob).get(pages["overview"]).content.decode()
        assert "Your membership is inactive" in body


class TestOverview:
    def test_it_shows_the_balance_and_the_chart(self, pages, allocation, alice, gpu):
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, alice, gpu, "1", 5)
        )
        body = client_as(alice).get(pages["overview"]).content.decode()
        assert 'data-testid="remaining">990<' in body
        assert 'id="burn-down-data"' in body
        assert "/static/plotly/plotly.min.js" in body
        assert "GPU H200" in body

    def test_a_member_sees_only_their_own_usage(self, pages, allocation, alice, bob, gpu, cpu):
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, alice, gpu, "1", 5)
        )
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, bob, cpu, "2", 100)
        )
        body = client_as(bob).get(pages["overview"]).content.decode()
        assert "Your usage by resource" in body
        assert "GPU H200" not in body.split("Your usage by resource")[1]
        assert "Usage by member" not in body
        assert "Alice Archer</td>" not in body


class TestHistoryAndRequests:
    def test_history_lists_every_diff(self, pages, allocation, alice, dana):
        request = services.change_request_submit(
            actor=alice, allocation=allocation, su_delta="250", justification="More"
        )
        services.change_request_approve(
            actor=dana, request=request, su_approved="200", reason="Half now"
        )
        body = client_as(alice).get(pages["history"]).content.decode()
        assert "+200" in body
        assert "1,200" in body
        assert "Half now" in body
        assert "+1,000" in body

    def test_requests_show_their_events(self, pages, allocation, alice, dana):
        request = services.change_request_submit(
            actor=alice, allocation=allocation, su_delta="250", justification="More"
        )
        services.change_request_comment(actor=dana, request=request, text="For which runs?")
        body = client_as(alice).get(pages["requests"]).content.decode()
        assert "For which runs?" in body
        assert "Cancel the request" in body


@pytest.mark.parametrize("name", ["overview", "jobs", "members", "requests", "history"])
def test_query_count_does_not_grow_with_rows(pages, allocation, alice, dana, gpu, name):
    client = client_as(alice)
    add_rows(allocation, alice=alice, dana=dana, gpu=gpu, n=2)
    few = queries_for(client, pages[name])
    add_rows(allocation, alice=alice, dana=dana, gpu=gpu, n=198, start=2)
    assert queries_for(client, pages[name]) == few


def test_the_members_own_pages_keep_their_query_count(pages, allocation, alice, bob, dana, gpu):
    client = client_as(bob)
    add_rows(allocation, alice=alice, dana=dana, gpu=gpu, n=2)
    counts = [queries_for(client, pages[n]) for n in MEMBER_PAGES]
    add_rows(allocation, alice=alice, dana=dana, gpu=gpu, n=198, start=2)
    assert [queries_for(client, pages[n]) for n in MEMBER_PAGES] == counts
