"""A cluster admin freezes one member in the browser; the scheduler's admission check
then refuses that member and still admits the others."""

import re

import pytest
from playwright.sync_api import expect

from accounts.tokens import api_token_issue
from allocations import services
from tests.browser.conftest import sign_in
from tests.conftest import NOW, make_user


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    # Admission compares "now" with the allocation's 2026 dates.
    from django.utils import timezone

    monkeypatch.setattr(timezone, "now", lambda: NOW)


def admission(page, secret: str, user: str):
    response = page.request.post(
        "/api/v1/admission/",
        headers={"Authorization": f"Bearer {secret}"},
        data={
            "cluster": "gpu1",
            "user": user,
            "allocation": "folding-gpu",
            "resource": "GPU H200",
            "estimate_su": "10",
        },
    )
    return response.status, response.json()


def test_an_admin_freezes_one_member_and_only_that_member_is_refused(
    new_page, allocation, alice, bob, dana
):
    carol = make_user("carol")
    services.membership_add(actor=alice, allocation=allocation, user=carol)
    secret = api_token_issue(actor=dana, cluster=allocation.cluster, name="slurm").secret

    admin = new_page()
    for user in ("alice", "bob", "carol"):
        assert admission(admin, secret, user)[0] == 200, user

    sign_in(admin, dana)
    admin.get_by_role("link", name="Review").click()
    expect(admin.get_by_role("heading", name="Pending requests")).to_be_visible()
    admin.get_by_role("link", name=re.compile("^gpu1")).click()
    admin.get_by_role("link", name="folding-gpu").click()
    expect(admin.get_by_role("heading", name=re.compile("^folding-gpu"))).to_be_visible()

    admin.get_by_role("link", name="Freeze bob").click()
    # A freeze without a reason is refused beside the field.
    admin.get_by_role("button", name="Freeze").click()
    expect(admin.locator(".field.has-error")).to_contain_text("Reason")
    admin.get_by_label("Reason").fill("Mining cryptocurrency on the GPU nodes")
    admin.get_by_role("button", name="Freeze").click()
    expect(admin.get_by_role("status")).to_contain_text("Frozen: bob on folding-gpu")
    expect(admin.locator("tr[data-member=bob]")).to_contain_text("Inactive")
    expect(admin.get_by_role("link", name="Unfreeze bob")).to_be_visible()

    status, body = admission(admin, secret, "bob")
    assert (status, body["allowed"], body["reason"]) == (409, False, "membership_inactive")
    for user in ("alice", "carol"):
        status, body = admission(admin, secret, user)
        assert (status, body["allowed"]) == (200, True), user
