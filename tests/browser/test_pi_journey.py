"""A PI asks for more SUs, the cluster admin grants another amount, the PI sees it."""

import re

from playwright.sync_api import expect

from tests.browser.conftest import sign_in


def test_a_pi_requests_sus_and_sees_the_admins_decision(new_page, allocation, alice, dana):
    pi = new_page()
    sign_in(pi, alice)
    expect(pi.get_by_role("heading", name="Your allocations")).to_be_visible()
    pi.get_by_role("link", name="folding-gpu").click()
    expect(pi.get_by_test_id("remaining")).to_have_text("1,000")

    pi.get_by_role("link", name="Request a change").click()
    # A bad amount is refused beside its field and the justification is kept.
    pi.get_by_label("SUs to add").fill("12.345678")
    pi.get_by_label("Justification").fill("The second training campaign")
    pi.get_by_role("button", name="Send the request").click()
    expect(pi.locator(".field.has-error")).to_contain_text("SUs to add")
    expect(pi.get_by_label("Justification")).to_have_value("The second training campaign")
    pi.get_by_label("SUs to add").fill("500")
    pi.get_by_role("button", name="Send the request").click()
    expect(pi.get_by_role("status")).to_contain_text("sent to the cluster's admins")
    expect(pi.get_by_text("Pending")).to_be_visible()

    admin = new_page()
    sign_in(admin, dana)
    admin.get_by_role("link", name="Review", exact=True).click()
    admin.get_by_role("link", name="folding-gpu").first.click()
    approve = admin.locator("form", has=admin.get_by_role("button", name="Approve"))
    approve.get_by_label("SUs to grant").fill("300")
    approve.get_by_label("Reason").fill("300 now, the rest after the review in June")
    approve.get_by_role("button", name="Approve").click()
    expect(admin.get_by_role("status")).to_contain_text(re.compile("approved", re.I))

    pi.goto(pi.url.replace("/requests/", "/"))
    expect(pi.get_by_test_id("remaining")).to_have_text("1,300")
    pi.get_by_role("link", name="History").click()
    expect(pi.get_by_role("cell", name="+300")).to_be_visible()
    expect(
        pi.get_by_role("cell", name="300 now, the rest after the review in June")
    ).to_be_visible()
    pi.get_by_role("link", name="Requests").click()
    expect(pi.get_by_text("granted +300 SU")).to_be_visible()


def test_a_keyboard_user_skips_the_nav_and_signs_out(page, allocation, bob):
    sign_in(page, bob)
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    # A member sees the allocation's balance and their own usage, no member list.
    page.get_by_role("link", name="folding-gpu").click()
    expect(page.get_by_role("heading", name="Your usage", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Members", exact=True)).to_have_count(0)
    page.get_by_role("button", name="Sign out").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Signed out")).to_be_visible()
