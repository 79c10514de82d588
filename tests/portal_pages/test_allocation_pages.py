import datetime as dt
import re

import pytest
from django.utils import timezone

from allocations import services
from allocations.models import Usage, UsageDaily
from allocations.rollups import rollups_refresh_all
from allocations.templatetags.portal import su
from tests.conftest import NOW, usage
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


JUNE_10 = dt.datetime(2026, 6, 10, 12, tzinfo=dt.UTC)


def charge(allocation, user, resource, job_id: str, unit_hours) -> None:
    services.usage_record(
        cluster=allocation.cluster,
        record=usage(allocation, user, resource, job_id, unit_hours, when=JUNE_10),
    )


def by_resource(body: str, heading: str) -> list[tuple[str, str]]:
    """The (resource, SU) rows of the table under the heading."""
    table = body.split(heading)[1].split("</table>")[0]
    return re.findall(r'<tr><td>([^<]+)</td><td class="num">([^<]+)</td></tr>', table)


class TestOverview:
    @pytest.fixture(autouse=True)
    def clock(self, monkeypatch):
        monkeypatch.setattr(timezone, "now", lambda: NOW)

    def test_it_shows_the_balance_the_forecast_and_the_charts(self, pages, allocation, alice, gpu):
        charge(allocation, alice, gpu, "1", 5)
        rollups_refresh_all(allocation_ids=[allocation.pk])
        body = client_as(alice).get(pages["overview"]).content.decode()
        assert 'data-testid="remaining">990<' in body
        # 10 SUs over the 28 days up to June 15th; 200 days left at that rate use 71.
        assert (
            "At 0.3571 SUs a day over the last 28 days, about 918 SUs will likely go unused "
            "by 2026-12-31" in body
        )
        for chart in ("burndown", "members", "resources"):
            url = f"/api/v1/allocations/{allocation.code}/charts/{chart}/"
            assert f'data-chart-url="{url}"' in body
        assert by_resource(body, "Usage by resource") == [("GPU H200", "10")]

    def test_before_its_start_it_says_when_it_starts(self, pages, allocation, alice, monkeypatch):
        monkeypatch.setattr(timezone, "now", lambda: dt.datetime(2025, 12, 15, tzinfo=dt.UTC))
        body = client_as(alice).get(pages["overview"]).content.decode()
        forecast = body.split('data-testid="forecast">')[1].split("</p>")[0]
        assert " ".join(forecast.split()) == "The allocation starts on 2026-01-01."

    def test_the_totals_by_resource_are_read_from_the_rollups(self, pages, allocation, alice, gpu):
        charge(allocation, alice, gpu, "1", 5)  # its rollups move with the batch
        client = client_as(alice)
        body = client.get(pages["overview"]).content.decode()
        assert by_resource(body, "Usage by resource") == [("GPU H200", "10")]
        # Without rollup rows the page has nothing to show, whatever the usage table holds.
        UsageDaily.objects.filter(allocation=allocation).delete()
        assert "No usage yet." in client.get(pages["overview"]).content.decode()
        rollups_refresh_all(allocation_ids=[allocation.pk])
        body = client.get(pages["overview"]).content.decode()
        assert by_resource(body, "Usage by resource") == [("GPU H200", "10")]

    def test_the_pi_sees_every_members_usage(self, pages, allocation, alice, bob, gpu, cpu):
        charge(allocation, alice, gpu, "1", 5)
        charge(allocation, bob, cpu, "2", 100)
        charge(allocation, bob, gpu, "3", 1)
        rollups_refresh_all(allocation_ids=[allocation.pk])
        bob_cpu = su(Usage.objects.get(job_id="2").su_amount)
        body = client_as(alice).get(pages["overview"]).content.decode()
        assert by_resource(body, "Usage by resource") == [(cpu.name, bob_cpu), ("GPU H200", "12")]
        assert "Usage by member" in body

    def test_a_member_sees_only_their_own_usage(self, pages, allocation, alice, bob, gpu, cpu):
        charge(allocation, alice, gpu, "1", 5)
        charge(allocation, bob, cpu, "2", 100)
        rollups_refresh_all(allocation_ids=[allocation.pk])
        bob_cpu = su(Usage.objects.get(job_id="2").su_amount)
        body = client_as(bob).get(pages["overview"]).content.decode()
        assert by_resource(body, "Your usage by resource") == [(cpu.name, bob_cpu)]
        assert "Usage by member" not in body
        assert "Alice Archer</td>" not in body
        # The burn-down is the allocation's: the forecast counts everyone's usage
        # (alice's 10 SUs and bob's 1 over 28 days).
        assert "At 0.3929 SUs a day over the last 28 days" in body

    def test_the_members_who_used_most_come_first(
        self, pages, allocation, alice, bob, charlie, gpu, cpu
    ):
        services.membership_add(actor=alice, allocation=allocation, user=charlie)
        charge(allocation, bob, gpu, "1", 5)
        charge(allocation, alice, gpu, "2", 1)
        services.membership_remove(actor=alice, membership=allocation.memberships.get(user=charlie))
        body = client_as(alice).get(pages["overview"]).content.decode()
        table = body.split("Usage by member")[1].split("</table>")[0]
        rows = re.findall(
            r'<tr><td>([^<]+)</td><td class="num">([^<]+)</td><td class="num">([^<]+)</td>'
            r'<td><span class="badge badge-ok">Active</span></td></tr>',
            table,
        )
        # Bob's 10 SUs before Alice's 2; a removed member is not listed; no cap is "—".
        assert rows == [("Bob Baker", "10", "300"), ("Alice Archer", "2", "—")]
        assert "resources: CPU, GPU H200" in " ".join(body.split())

    def test_it_costs_two_queries_of_its_own(
        self, pages, allocation, alice, django_assert_num_queries
    ):
        client = client_as(alice)
        client.get(pages["overview"])
        # Session, user, the nav's review link, then the allocation with the viewer's
        # rights and the page's figures.
        with django_assert_num_queries(5):
            client.get(pages["overview"])


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
