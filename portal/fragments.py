"""The rows of the busiest tables (the dashboard, the review queue), rendered with Jinja2
from templates/fragments/ and printed by the page's Django template as one safe string.

Measured on those pages: the Django template language spends about 5 µs on each value it
prints (lookup, localisation, escaping), so a page of 25 rows of 30 values cost more than
the page's query; Jinja2 compiles a template to Python and prints a value in well under a
microsecond. The pages themselves, forms and all, stay Django templates. Rows come in as
plain values worked out by the view; Jinja2 escapes everything it prints (autoescape) and
fails on a name the context lacks (StrictUndefined) rather than printing nothing.
Rows are dicts, read as row["key"]: Jinja2's row.key tries an attribute first, which
on a dict costs twice as much.
"""

from django.template import engines
from django.utils.safestring import SafeString, mark_safe


def fragment(name: str, context: dict) -> SafeString:
    # Safe because Jinja2 escaped every value it printed.
    return mark_safe(engines["fragments"].get_template(name).render(context))  # noqa: S308
