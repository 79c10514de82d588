from decimal import Decimal

import pytest

from tests.conftest import make_user
from tests.portal_pages.conftest import client_as


class TestMemberPages:
    def test_it_shows_the_pool_and_warns_when_caps_exceed_the_budget(self, allocation, alice):
        client = client_as(alice)
        url = f"/allocations/{allocation.code}/members/"
        body = client.get(url).content.decode()
        assert "Not claimed by caps" in body
        assert "more than the budget" not in body
        for name in ("erin", "frank", "gus"):
            make_user(name)
            client.post(
                f"/allocations/{allocation.code}/members/add/", {"user": name, "su_cap": "300"}
            )
        body = client.get(url).content.decode()
        # bob 300 + 3 x 300 = 1,200 SU of caps on a 1,000 SU budget.
        assert "add up to 1,200 SU, more than the budget" in body

    def test_the_pi_adds_a_member_by_e_mail(self, allocation, alice, charlie):
        response = client_as(alice).post(
            f"/allocations/{allocation.code}/members/add/",
            {"user": "CHARLIE@example.edu", "su_cap": "50"},
        )
        assert response.status_code == 302
        membership = allocation.memberships.get(user=charlie)
        assert membership.su_cap == Decimal(50)

    def test_an_unknown_user_is_an_error_beside_the_field(self, allocation, alice):
        response = client_as(alice).post(
            f"/allocations/{allocation.code}/members/add/", {"user": "nobody"}
        )
        assert response.status_code == 400
        assert "No user with the username or e-mail" in response.content.decode()
        assert response.context["form"]["user"].value() == "nobody"

    def test_a_cap_above_the_budget_is_refused(self, allocation, alice, bob):
        membership = allocation.memberships.get(user=bob)
        response = client_as(alice).post(
            f"/members/{membership.code}/cap/", {f"{membership.code}-su_cap": "5000"}
        )
        assert response.status_code == 400
        assert "above the allocation" in response.content.decode()
        membership.refresh_from_db()
        assert membership.su_cap == Decimal(300)

    def test_the_pi_clears_a_cap(self, allocation, alice, bob):
        membership = allocation.memberships.get(user=bob)
        response = client_as(alice).post(
            f"/members/{membership.code}/cap/", {f"{membership.code}-su_cap": ""}
        )
        assert response.status_code == 302
        membership.refresh_from_db()
        assert membership.su_cap is None

    def test_the_pi_deactivates_and_reactivates(self, allocation, alice, bob):
        membership = allocation.memberships.get(user=bob)
        client = client_as(alice)
        client.post(f"/members/{membership.code}/status/", {"status": "INACTIVE"})
        membership.refresh_from_db()
        assert membership.status == "INACTIVE"
        client.post(f"/members/{membership.code}/status/", {"status": "ACTIVE"})
        membership.refresh_from_db()
        assert membership.status == "ACTIVE"
        assert membership.changes.filter(kind="STATUS").count() == 2

    @pytest.mark.parametrize(
        ("user", "status"), [("bob", 403), ("charlie", 404)], ids=["member", "outsider"]
    )
    def test_only_managers_change_members(self, allocation, request, user, status):
        membership = allocation.memberships.get(user__username="bob")
        client = client_as(request.getfixturevalue(user))
        assert (
            client.post(f"/members/{membership.code}/status/", {"status": "INACTIVE"}).status_code
            == status
        )
        assert (
            client.post(
                f"/members/{membership.code}/cap/", {f"{membership.code}-su_cap": "999"}
            ).status_code
            == status
        )
        assert (
            client.post(
                f"/allocations/{allocation.code}/members/add/", {"user": "charlie"}
            ).status_code
            == status
        )
        membership.refresh_from_db()
        assert (membership.status, membership.su_cap) == ("ACTIVE", Decimal(300))
        assert allocation.memberships.count() == 2


def test_the_cap_field_shows_a_value_the_form_takes_back(allocation, alice):
    body = client_as(alice).get(f"/allocations/{allocation.code}/members/").content.decode()
    # bob's 300 SU cap, without the separators or trailing zeros a form would refuse.
    assert 'value="300"' in body
