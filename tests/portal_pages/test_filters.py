from decimal import Decimal

import pytest

from allocations.templatetags.portal import plain_su, signed_su, su, unit_hours


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (Decimal("1234567.8900"), "1,234,567.89"),
        (Decimal("0.0001"), "0.0001"),
        (Decimal("1000.0000"), "1,000"),
        (Decimal("-177.2070"), "-177.207"),
        (Decimal("-0.0000"), "0"),
        (None, "—"),
    ],
)
def test_su_reads_well_and_stays_exact(value, shown):
    assert su(value) == shown


def test_signed_su_shows_the_direction():
    assert (signed_su(Decimal(200)), signed_su(Decimal(-5)), signed_su(None)) == ("+200", "-5", "—")


@pytest.mark.parametrize(
    ("value", "shown"),
    [(Decimal("3630.0000"), "3630"), (Decimal("0.5000"), "0.5"), (Decimal(100), "100"), (None, "")],
)
def test_plain_su_is_what_a_form_accepts(value, shown):
    assert plain_su(value) == shown


def test_unit_hours_from_unit_seconds():
    assert unit_hours(Decimal("14400.000")) == "4.00"
