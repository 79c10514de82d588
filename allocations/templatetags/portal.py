from decimal import Decimal

from django import template

from allocations import selectors
from portal.fragments import fragment

register = template.Library()


@register.simple_tag
def form_field(field):
    """One form field with its label, help text and errors beside it, tied together by
    ids (templates/fragments/portal/fields.html: printed by Jinja2, which the filter forms
    of the busiest pages use too)."""
    return fragment("portal/fields.html", {"fields": [field]})


@register.filter
def can_review(user) -> bool:
    """Whether the nav shows the review queue: superusers and the admins of any cluster."""
    return user.is_superuser or selectors.user_administers_any_cluster(user=user)


@register.filter
def su(value) -> str:
    """An SU amount with thousands separators and no trailing zeros beyond the scale."""
    if value is None or value == "":
        return "—"
    value = Decimal(value)
    text = f"{value:,.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@register.filter
def signed_su(value) -> str:
    if value is None:
        return "—"
    text = su(value)
    return text if Decimal(value) < 0 else f"+{text}"


@register.filter
def unit_hours(raw_unit_seconds) -> str:
    """Raw usage in unit-hours (GPU-hours, core-hours), to two places for reading."""
    return f"{Decimal(raw_unit_seconds) / 3600:,.2f}"


@register.filter
def plain_su(value) -> str:
    """An SU amount as a form accepts it back: no separators, no trailing zeros."""
    if value is None:
        return ""
    text = f"{Decimal(value):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
