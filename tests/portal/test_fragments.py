"""The Jinja2 fragments print what the Django templates they stand in for print."""

import pytest
from django.template.loader import render_to_string

from allocations.models import Cluster
from allocations.review_forms import QueueFilterForm
from portal.fragments import fragment


def _words(html: str) -> str:
    return " ".join(html.split())


@pytest.mark.parametrize(
    "data", [None, {"max_su": "-1", "cluster": "nope"}, {"max_su": "12.5"}], ids=str
)
def test_form_fields_print_as_the_field_template_prints_them(db, data):
    clusters = [Cluster.objects.create(name="gpu1", title="GPU <cluster>")]
    form = QueueFilterForm(data, clusters=clusters)
    form.is_valid()

    by_jinja = fragment("portal/fields.html", {"fields": list(form)})
    by_django = "".join(render_to_string("portal/_field.html", {"field": field}) for field in form)

    assert _words(by_jinja) == _words(by_django)
    assert "GPU &lt;cluster&gt;" in by_jinja
    if data and "nope" in data.values():
        assert 'class="error" id="id_cluster_error"' in by_jinja
