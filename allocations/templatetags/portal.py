from decimal import Decimal

from django import template
from django.urls import NoReverseMatch, reverse

from allocations import selectors

register = template.Library()


@register.filter
def can_review(user) -> bool:
    """Whether the nav shows the review queue: superusers and the admins of any cluster."""
    if not user.is_authenticated:
        return False
    # Memoised on the user object: the layout asks once per page, but included templates may ask again.
    cached = getattr(user, "_portal_can_review", None)
    if cached is None:
        cached = user.is_superuser or selectors.user_administers_any_cluster(user=user)
        user._portal_can_review = cached
    return cached


@register.filter
def su(value) -> str:
    """An SU amount with thousands separators and no trailing zeros beyond the scale."""
    if value is None or value == "":
        return "—"
    value = Decimal(value)
    text = f"{value:,.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@register.simple_tag
def url_or_empty(name, *args) -> str:
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return ""
