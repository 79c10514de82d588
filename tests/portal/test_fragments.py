"""Form fields as every portal page prints them (templates/fragments/portal/fields.html,
through portal/_field.html): label, required mark, widget, help text and errors, tied
together by the ids aria-describedby names."""

import pytest
from django.template.loader import render_to_string

from allocations.models import Cluster
from allocations.portal_forms import MemberAddForm
from allocations.review_forms import QueueFilterForm


def _words(html: str) -> str:
    return " ".join(html.split())


@pytest.fixture
def clusters(db):
    return [Cluster.objects.create(name="gpu1", title="GPU <cluster>")]


def test_a_field_with_help_text(clusters):
    form = QueueFilterForm(None, clusters=clusters)

    html = _words(render_to_string("portal/_field.html", {"field": form["max_su"]}))

    assert html.startswith(
        '<div class="field"> <label for="id_max_su">Asking for at most (SU)</label>'
    )
    assert 'aria-describedby="id_max_su_helptext"' in html
    assert '<p class="help" id="id_max_su_helptext">Show only the small requests.</p>' in html
    assert "error" not in html


def test_a_field_with_errors(clusters):
    form = QueueFilterForm({"cluster": "nope", "max_su": "-1"}, clusters=clusters)
    assert not form.is_valid()

    html = _words(
        "".join(render_to_string("portal/_field.html", {"field": field}) for field in form)
    )

    assert html.count('<div class="field has-error">') == 2
    assert '<p class="error" id="id_cluster_error">' in html
    assert 'aria-describedby="id_max_su_helptext id_max_su_error" aria-invalid="true"' in html
    assert "GPU &lt;cluster&gt;" in html  # the option's label, escaped


def test_a_required_field_is_marked(db):
    form = MemberAddForm(None)
    name = next(name for name, field in form.fields.items() if field.required)

    html = render_to_string("portal/_field.html", {"field": form[name]})

    assert '<span class="required" aria-hidden="true">*</span>' in html
