"""Every form control on the portal's form pages is named for a screen reader: a label
for it, or an aria-label; and every id its aria-describedby names (help text, errors) is
on the page. Checked on each page as it first shows and, for the forms that can fail, as
it shows again with errors."""

from html.parser import HTMLParser

import pytest
from django.urls import reverse

from allocations import services
from tests.portal_pages.conftest import client_as

CONTROLS = {"input", "select", "textarea"}
UNNAMED = {"hidden", "submit", "button"}


class _Controls(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.labelled: set[str] = set()
        self.controls: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "label" and attrs.get("for"):
            self.labelled.add(attrs["for"])
        if tag in CONTROLS and attrs.get("type") not in UNNAMED:
            self.controls.append(attrs)


def problems(html: str) -> list[str]:
    page = _Controls()
    page.feed(html)
    found = [] if page.controls else ["no form control on the page"]
    for control in page.controls:
        name = control.get("name") or control.get("id")
        if control.get("id") not in page.labelled and not control.get("aria-label"):
            found.append(f"{name}: no label")
        for ref in (control.get("aria-describedby") or "").split():
            if ref not in page.ids:
                found.append(f"{name}: aria-describedby names {ref!r}, which is not on the page")
    return found


@pytest.fixture
def pending(alice, allocation):
    return services.change_request_submit(
        actor=alice, allocation=allocation, su_delta="100", justification="More runs"
    )


def test_the_pis_form_pages(alice, allocation, pending):
    client = client_as(alice)
    pages = [
        reverse("allocations:allocation-request"),
        reverse("allocations:change-request", args=[allocation.code]),
        reverse("allocations:members", args=[allocation.code]),
        reverse("allocations:jobs", args=[allocation.code]),
        reverse("allocations:requests", args=[allocation.code]),
    ]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        assert problems(response.content.decode()) == [], url


def test_the_pis_forms_shown_again_with_errors(alice, allocation):
    client = client_as(alice)
    response = client.post(
        reverse("allocations:allocation-request"), {"su_amount": "1.00001", "name": "!"}
    )
    html = response.content.decode()

    assert response.status_code == 200
    assert 'aria-invalid="true"' in html
    assert problems(html) == []
    response = client.post(reverse("allocations:change-request", args=[allocation.code]), {})
    assert response.status_code == 200
    assert problems(response.content.decode()) == []


def test_the_admins_form_pages(dana, cluster, allocation, pending):
    client = client_as(dana)
    pages = [
        reverse("allocations:review:queue"),
        reverse("allocations:review:request", args=[pending.code]),
        reverse("allocations:review:cluster", args=[cluster.code]),
    ]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        assert problems(response.content.decode()) == [], url


def test_the_queue_filter_shown_again_with_errors(dana, cluster):
    response = client_as(dana).get(reverse("allocations:review:queue"), {"max_su": "-1"})
    html = response.content.decode()

    assert 'aria-invalid="true"' in html
    assert 'aria-describedby="id_max_su_helptext id_max_su_error"' in html
    assert problems(html) == []


def test_a_page_that_breaks_the_rule_is_caught():
    assert problems("<p>No form here</p>") == ["no form control on the page"]
    assert problems('<input name="x" id="x" aria-describedby="x_help">') == [
        "x: no label",
        "x: aria-describedby names 'x_help', which is not on the page",
    ]
