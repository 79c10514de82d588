"""Every review page and action: who may use it (the cluster's admin and a superuser;
not an admin of another cluster, the PI, a member or an outsider), what it does, how a
refusal is shown, and a query count that does not grow with the rows."""

import datetime as dt
from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from allocations import services
from allocations.models import ChangeRequest, Membership, Rate, Status
from tests.allocations.dbstate import unchanged
from tests.review.conftest import client_as, request_new_allocations

ADMINS = ["dana", "staff"]
OTHERS = ["eve", "alice", "bob", "charlie"]


def url(name: str, *args) -> str:
    return reverse(f"allocations:review:{name}", args=args)


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


@pytest.fixture
def world(allocation, pending_request, people, alice, dana):
    """The allocation (approved), a pending change request on it, and the people."""
    change = services.change_request_submit(
        actor=alice, allocation=allocation, su_delta="500", justification="More runs"
    )
    membership = Membership.objects.get(allocation=allocation, user=people["bob"])
    rate = allocation.resources.get(name="GPU H200").rates.get()
    return {"allocation": allocation, "request": change, "membership": membership, "rate": rate}


def pages(world) -> dict[str, str]:
    allocation = world["allocation"]
    cluster = allocation.cluster
    return {
        "request": url("request", world["request"].code),
        "allocation": url("allocation", allocation.code),
        "allocation-freeze": url("allocation-status", allocation.code, "freeze"),
        "project-freeze": url("project-status", allocation.project.code, "freeze"),
        "member-freeze": url("member-status", world["membership"].code, "freeze"),
        "cluster": url("cluster", cluster.code),
        "rates": url("rates", cluster.code),
        "rate-close": url("rate-close", world["rate"].code),
        "capacity": url("capacity", cluster.code),
    }


PAGES = [
    "request",
    "allocation",
    "allocation-freeze",
    "project-freeze",
    "member-freeze",
    "cluster",
    "rates",
    "rate-close",
    "capacity",
]


class TestWhoMaySee:
    @pytest.mark.parametrize("page", PAGES)
    @pytest.mark.parametrize("who", ADMINS)
    def test_the_clusters_admin_and_a_superuser_see_it(self, world, people, page, who):
        response = client_as(people[who]).get(pages(world)[page])

        assert response.status_code == 200

    @pytest.mark.parametrize("page", PAGES)
    @pytest.mark.parametrize("who", OTHERS)
    def test_anyone_else_gets_a_404(self, world, people, page, who):
        response = client_as(people[who]).get(pages(world)[page])

        assert response.status_code == 404

    @pytest.mark.parametrize("page", PAGES)
    def test_an_anonymous_visitor_is_sent_to_sign_in(self, world, page):
        response = client_as(None).get(pages(world)[page])

        assert response.status_code == 302
        assert "login" in response["Location"]

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
    def test_the_queue_is_refused_to_people_who_administer_no_cluster(self, world, people, who):
        assert client_as(people[who]).get(url("queue")).status_code == 403

    def test_the_queue_lists_only_the_admins_own_clusters(
        self, world, people, other_cluster, alice, project
    ):
        from allocations.models import Resource

        cpu = Resource.objects.create(cluster=other_cluster, name="CPU", kind="CPU", unit="core")
        request_new_allocations(alice=alice, project=project, cluster=other_cluster, gpu=cpu, n=1)

        for who, expected in [("dana", 1), ("eve", 1), ("staff", 2)]:
            response = client_as(people[who]).get(url("queue"))
            assert response.status_code == 200
            assert response.context["page"].paginator.count == expected, who


class TestQueue:
    def test_it_orders_by_priority_then_age(self, world, alice, dana):
        urgent = services.change_request_submit(
            actor=alice,
            allocation=world["allocation"],
            su_delta="1",
            justification="Deadline",
            priority=ChangeRequest.Priority.URGENT,
        )

        response = client_as(dana).get(url("queue"))

        codes = [row["code"] for row in response.context["rows"]]
        assert codes == [urgent.code, world["request"].code]

    def test_each_row_shows_usage_burn_history_and_commitment(self, world, dana, monkeypatch):
        from django.utils import timezone

        from tests.conftest import NOW

        monkeypatch.setattr(timezone, "now", lambda: NOW)
        response = client_as(dana).get(url("queue"))

        row = response.context["rows"][0]
        assert row["history"] == {"APPROVED": 1}
        assert row["burn_rate"] == Decimal(0)
        # June 2026: 1,000 SU over 365 days, 30 of them in June; +500 if approved.
        assert row["commitment"].committed == Decimal("82.1918")
        assert row["commitment"].if_approved == Decimal("123.2877")
        assert b"123.2877" in response.content or b"123.288" in response.content

    def test_it_filters_the_small_requests(self, world, dana, alice):
        services.change_request_submit(
            actor=alice, allocation=world["allocation"], su_delta="50", justification="A bit"
        )

        response = client_as(dana).get(url("queue"), {"max_su": "100"})

        assert [row["su_delta"] for row in response.context["rows"]] == [50]

    def test_it_filters_by_cluster_and_refuses_a_cluster_of_someone_else(
        self, world, dana, staff, other_cluster, alice, project
    ):
        from allocations.models import Resource

        cpu = Resource.objects.create(cluster=other_cluster, name="CPU", kind="CPU", unit="core")
        request_new_allocations(alice=alice, project=project, cluster=other_cluster, gpu=cpu, n=1)
        gpu1 = world["allocation"].cluster

        mine = client_as(dana).get(url("queue"), {"cluster": str(gpu1.code)})
        theirs = client_as(dana).get(url("queue"), {"cluster": str(other_cluster.code)})
        # A superuser chooses any cluster, its code written either way.
        everyone = client_as(staff).get(url("queue"), {"cluster": other_cluster.code.hex})

        assert mine.context["filters"].is_valid()
        assert [row["cluster_name"] for row in mine.context["rows"]] == ["gpu1"]
        assert "cluster" in theirs.context["filters"].errors
        assert theirs.context["page"].paginator.count == 1  # everything dana reviews
        assert [row["cluster_name"] for row in everyone.context["rows"]] == ["cpu9"]

    def test_a_bad_filter_is_shown_beside_its_field_and_lists_everything(self, world, dana):
        response = client_as(dana).get(url("queue"), {"max_su": "lots"})

        assert response.status_code == 200
        assert "max_su" in response.context["filters"].errors
        assert response.context["page"].paginator.count == 1


class TestDecisions:
    def test_the_admin_approves_another_amount_with_a_reason(self, world, dana):
        response = client_as(dana).post(
            url("request", world["request"].code),
            {"action": "approve", "su_approved": "200", "reason": "Half now"},
        )

        assert response.status_code == 302
        world["allocation"].refresh_from_db()
        assert world["allocation"].su_budget == Decimal("1200")
        assert "the budget is now 1,200.0000 SU" in messages_of(response)[0]

    def test_another_amount_without_a_reason_is_refused_beside_the_reason(self, world, dana):
        client = client_as(dana)
        with unchanged():
            response = client.post(
                url("request", world["request"].code),
                {"action": "approve", "su_approved": "200", "reason": ""},
            )

        assert response.status_code == 400
        assert response.context["forms"]["approve"].errors == {
            "reason": ["Say why you approve a different amount than requested."]
        }

    def test_a_malformed_amount_is_refused_beside_it(self, world, dana):
        client = client_as(dana)
        with unchanged():
            response = client.post(
                url("request", world["request"].code),
                {"action": "approve", "su_approved": "1.000001"},
            )

        assert response.status_code == 400
        assert "su_approved" in response.context["forms"]["approve"].errors

    def test_a_rejection_needs_a_reason(self, world, dana):
        client = client_as(dana)
        with unchanged():
            response = client.post(
                url("request", world["request"].code), {"action": "reject", "reason": " "}
            )

        assert response.status_code == 400
        assert "reason" in response.context["forms"]["reject"].errors

    def test_the_admin_rejects_with_a_reason(self, world, dana):
        response = client_as(dana).post(
            url("request", world["request"].code), {"action": "reject", "reason": "Full"}
        )

        assert response.status_code == 302
        world["request"].refresh_from_db()
        assert (world["request"].state, world["request"].decision_reason) == ("REJECTED", "Full")

    def test_the_admin_comments_and_the_request_stays_pending(self, world, dana):
        response = client_as(dana).post(
            url("request", world["request"].code), {"action": "comment", "text": "Why?"}
        )

        assert response.status_code == 302
        assert response["Location"] == url("request", world["request"].code)
        world["request"].refresh_from_db()
        assert world["request"].state == "PENDING"
        assert world["request"].events.last().text == "Why?"

    def test_a_decided_request_cannot_be_decided_again(self, world, dana):
        services.change_request_reject(actor=dana, request=world["request"], reason="No")

        client = client_as(dana)
        with unchanged():
            response = client.post(url("request", world["request"].code), {"action": "approve"})

        assert response.status_code == 400
        assert "already rejected" in str(response.context["forms"]["approve"].non_field_errors())

    @pytest.mark.parametrize("who", OTHERS)
    @pytest.mark.parametrize(
        "data",
        [
            {"action": "approve"},
            {"action": "reject", "reason": "x"},
            {"action": "comment", "text": "x"},
        ],
    )
    def test_nobody_else_may_decide(self, world, people, who, data):
        client = client_as(people[who])
        with unchanged():
            response = client.post(url("request", world["request"].code), data)

        assert response.status_code == 404

    def test_an_unknown_action_is_a_404(self, world, dana):
        response = client_as(dana).post(url("request", world["request"].code), {"action": "x"})

        assert response.status_code == 404


class TestApproveSeveral:
    def test_the_chosen_requests_are_approved_as_asked(self, world, dana, alice, project):
        more = request_new_allocations(
            alice=alice,
            project=project,
            cluster=world["allocation"].cluster,
            gpu=world["rate"].resource,
            n=2,
        )

        response = client_as(dana).post(
            url("approve-several"), {"requests": [str(r.code) for r in more]}
        )

        assert response.status_code == 302
        assert messages_of(response) == [
            "Approved 2 requests as asked (extra-0, extra-1); +21.0000 SU in all."
        ]
        assert ChangeRequest.objects.filter(state="PENDING").count() == 1

    def test_one_refusal_approves_none_and_says_why(self, world, dana, alice, project):
        more = request_new_allocations(
            alice=alice,
            project=project,
            cluster=world["allocation"].cluster,
            gpu=world["rate"].resource,
            n=2,
        )
        # Giving back more than is unused cannot be approved.
        services.usage_record_batch(
            cluster=world["allocation"].cluster,
            records=[
                services.UsageInput(
                    job_id="big",
                    user=alice,
                    allocation=world["allocation"],
                    resource=world["rate"].resource,
                    raw_unit_seconds=Decimal(400 * 3600),
                    charged_at=dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
                )
            ],
        )
        give_back = services.change_request_submit(
            actor=alice, allocation=world["allocation"], su_delta="-100", justification="Spare"
        )
        services.usage_record_batch(
            cluster=world["allocation"].cluster,
            records=[
                services.UsageInput(
                    job_id="bigger",
                    user=alice,
                    allocation=world["allocation"],
                    resource=world["rate"].resource,
                    raw_unit_seconds=Decimal(90 * 3600),
                    charged_at=dt.datetime(2026, 3, 2, tzinfo=dt.UTC),
                )
            ],
        )
        chosen = [*more, give_back]

        client = client_as(dana)
        with unchanged():
            response = client.post(
                url("approve-several"), {"requests": [str(r.code) for r in chosen]}
            )

        assert response.status_code == 302
        [message] = messages_of(response)
        assert message.startswith("Nothing was approved: the request for folding-gpu on gpu1")
        assert "unused SUs can be given back" in message

    def test_an_empty_choice_is_explained(self, world, dana):
        response = client_as(dana).post(url("approve-several"), {})

        assert messages_of(response) == ["Choose at least one request to approve."]

    @pytest.mark.parametrize("who", OTHERS)
    def test_requests_outside_the_users_queue_cannot_be_chosen(self, world, people, who):
        client = client_as(people[who])
        with unchanged():
            response = client.post(
                url("approve-several"), {"requests": [str(world["request"].code)]}
            )

        assert response.status_code == 302
        assert "not one of the available choices" in messages_of(response)[0]

    def test_it_accepts_only_post(self, world, dana):
        assert client_as(dana).get(url("approve-several")).status_code == 405


class TestFreezing:
    def test_the_admin_freezes_a_member_with_a_reason(self, world, dana):
        membership = world["membership"]

        response = client_as(dana).post(
            url("member-status", membership.code, "freeze"), {"reason": "Abuse report"}
        )

        assert response.status_code == 302
        assert response["Location"] == url("allocation", world["allocation"].code)
        membership.refresh_from_db()
        assert membership.status == Status.INACTIVE
        change = membership.changes.last()
        assert (change.actor.username, change.reason) == ("dana", "Abuse report")

    def test_and_unfreezes_them(self, world, dana):
        membership = world["membership"]
        services.membership_set_status(
            actor=dana, membership=membership, status=Status.INACTIVE, reason="x"
        )

        client_as(dana).post(url("member-status", membership.code, "unfreeze"), {"reason": "ok"})

        membership.refresh_from_db()
        assert membership.status == Status.ACTIVE

    def test_a_freeze_needs_a_reason(self, world, dana):
        client = client_as(dana)
        with unchanged():
            response = client.post(
                url("member-status", world["membership"].code, "freeze"), {"reason": ""}
            )

        assert response.status_code == 400
        assert "reason" in response.context["form"].errors

    def test_freezing_what_is_frozen_is_refused_on_the_form(self, world, dana):
        services.allocation_set_status(
            actor=dana, allocation=world["allocation"], status=Status.INACTIVE, reason="x"
        )

        client = client_as(dana)
        with unchanged():
            response = client.post(
                url("allocation-status", world["allocation"].code, "freeze"), {"reason": "y"}
            )

        assert response.status_code == 400
        assert "already INACTIVE" in str(response.context["form"].non_field_errors())

    def test_the_admin_freezes_the_allocation(self, world, dana):
        client_as(dana).post(
            url("allocation-status", world["allocation"].code, "freeze"), {"reason": "Audit"}
        )

        world["allocation"].refresh_from_db()
        assert world["allocation"].status == Status.INACTIVE
        assert world["allocation"].changes.last().reason == "Audit"

    def test_the_admin_freezes_the_project_and_returns_to_a_local_page(self, world, dana):
        back = url("allocation", world["allocation"].code)
        project = world["allocation"].project

        response = client_as(dana).post(
            url("project-status", project.code, "freeze"),
            {"reason": "Unpaid", "next": back},
        )

        assert response["Location"] == back
        project.refresh_from_db()
        assert project.status == Status.INACTIVE

    def test_it_never_redirects_off_site(self, world, dana):
        project = world["allocation"].project

        response = client_as(dana).post(
            url("project-status", project.code, "freeze"),
            {"reason": "Unpaid", "next": "https://evil.example/"},
        )

        assert response["Location"] == url("queue")

    def test_an_unknown_action_is_a_404(self, world, dana):
        response = client_as(dana).get(url("member-status", world["membership"].code, "ban"))

        assert response.status_code == 404

    @pytest.mark.parametrize("who", OTHERS)
    @pytest.mark.parametrize("page", ["allocation-freeze", "project-freeze", "member-freeze"])
    def test_nobody_else_may_freeze(self, world, people, who, page):
        client = client_as(people[who])
        with unchanged():
            response = client.post(pages(world)[page], {"reason": "x"})

        assert response.status_code == 404


class TestRates:
    def test_the_admin_adds_a_window(self, world, dana):
        cluster = world["allocation"].cluster
        cpu = cluster.resources.get(name="CPU")
        Rate.objects.filter(resource=cpu).update(end=dt.datetime(2027, 1, 1, tzinfo=dt.UTC))

        response = client_as(dana).post(
            url("rates", cluster.code),
            {
                "resource": str(cpu.code),
                "su_per_unit_hour": "0.02",
                "start": "2027-01-01T00:00",
                "reason": "New price list",
            },
        )

        assert response.status_code == 302
        rate = Rate.objects.get(resource=cpu, start=dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
        assert (rate.su_per_unit_hour, rate.created_by.username) == (Decimal("0.02"), "dana")

    def test_an_overlapping_window_is_refused_with_the_services_message(self, world, dana):
        cluster = world["allocation"].cluster
        gpu = cluster.resources.get(name="GPU H200")

        client = client_as(dana)
        with unchanged():
            response = client.post(
                url("rates", cluster.code),
                {"resource": str(gpu.code), "su_per_unit_hour": "3", "start": "2026-07-01T00:00"},
            )

        assert response.status_code == 400
        assert response.context["form"].errors == {
            "start": [
                "This window overlaps the rate window 2025-01-01 00:00 to open UTC "
                "(2.000000 SU per GPU-hour)."
            ]
        }

    def test_a_resource_of_another_cluster_cannot_be_chosen(self, world, dana, other_cluster):
        from allocations.models import Resource

        foreign = Resource.objects.create(
            cluster=other_cluster, name="CPU", kind="CPU", unit="core"
        )

        client = client_as(dana)
        with unchanged():
            response = client.post(
                url("rates", world["allocation"].cluster.code),
                {
                    "resource": str(foreign.code),
                    "su_per_unit_hour": "1",
                    "start": "2027-01-01T00:00",
                },
            )

        assert "resource" in response.context["form"].errors

    def test_the_page_reads_each_rate_both_ways(self, world, dana):
        response = client_as(dana).get(url("rates", world["allocation"].cluster.code))

        assert b"1 GPU-hour = 2 SU" in response.content
        assert b"1 SU = 0.5 GPU-hours" in response.content

    def test_the_admin_closes_a_window(self, world, dana):
        rate = world["rate"]

        response = client_as(dana).post(
            url("rate-close", rate.code), {"end": "2027-01-01T00:00", "reason": "Repriced"}
        )

        assert response.status_code == 302
        rate.refresh_from_db()
        assert rate.end == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
        assert rate.corrections.get().reason == "Repriced"

    def test_a_close_before_the_start_is_refused_beside_the_end(self, world, dana):
        client = client_as(dana)
        with unchanged():
            response = client.post(
                url("rate-close", world["rate"].code), {"end": "2024-01-01T00:00"}
            )

        assert response.status_code == 400
        assert "end" in response.context["form"].errors

    @pytest.mark.parametrize("who", OTHERS)
    def test_nobody_else_may_add_or_close(self, world, people, who):
        client = client_as(people[who])
        with unchanged():
            added = client.post(
                url("rates", world["allocation"].cluster.code),
                {
                    "resource": str(world["rate"].resource.code),
                    "su_per_unit_hour": "1",
                    "start": "2030-01-01T00:00",
                },
            )
            closed = client.post(url("rate-close", world["rate"].code), {"end": "2030-01-01T00:00"})

        assert (added.status_code, closed.status_code) == (404, 404)


class TestCapacity:
    def test_the_admin_changes_it_with_a_reason(self, world, dana):
        cluster = world["allocation"].cluster

        response = client_as(dana).post(
            url("capacity", cluster.code),
            {"su_capacity_per_month": "150000", "reason": "New racks"},
        )

        assert response.status_code == 302
        cluster.refresh_from_db()
        assert cluster.su_capacity_per_month == Decimal("150000")
        page = client_as(dana).get(url("capacity", cluster.code))
        assert b"New racks" in page.content

    def test_a_bad_value_is_refused_beside_it(self, world, dana):
        client = client_as(dana)
        with unchanged():
            response = client.post(
                url("capacity", world["allocation"].cluster.code),
                {"su_capacity_per_month": "-1", "reason": "x"},
            )

        assert response.status_code == 400
        assert list(response.context["form"].errors) == ["su_capacity_per_month"]

    @pytest.mark.parametrize("who", OTHERS)
    def test_nobody_else_may_change_it(self, world, people, who):
        client = client_as(people[who])
        with unchanged():
            response = client.post(
                url("capacity", world["allocation"].cluster.code),
                {"su_capacity_per_month": "1", "reason": "x"},
            )

        assert response.status_code == 404


class TestASuperuser:
    """Site-wide power: every action of a cluster admin, on any cluster."""

    def test_decides_freezes_and_sets_capacity(self, world, staff):
        client = client_as(staff)
        allocation = world["allocation"]

        approved = client.post(url("request", world["request"].code), {"action": "approve"})
        frozen = client.post(
            url("member-status", world["membership"].code, "freeze"), {"reason": "x"}
        )
        capacity = client.post(
            url("capacity", allocation.cluster.code),
            {"su_capacity_per_month": "5", "reason": "x"},
        )

        assert (approved.status_code, frozen.status_code, capacity.status_code) == (302, 302, 302)
        allocation.refresh_from_db()
        world["membership"].refresh_from_db()
        assert allocation.su_budget == Decimal(1500)
        assert world["membership"].status == Status.INACTIVE
