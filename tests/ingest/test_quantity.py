"""Kubernetes resource quantities: parse_quantity. Pure function, no database."""

from decimal import Decimal

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from allocations.parsers import ParseError, parse_quantity
from allocations.parsers.units import QUANTITY_MAX

D = Decimal
MULTIPLIER = {
    "": D(1),
    "m": D("0.001"),
    "k": D(10) ** 3,
    "M": D(10) ** 6,
    "G": D(10) ** 9,
    "T": D(10) ** 12,
    "P": D(10) ** 15,
    "E": D(10) ** 18,
    "Ki": D(2) ** 10,
    "Mi": D(2) ** 20,
    "Gi": D(2) ** 30,
    "Ti": D(2) ** 40,
    "Pi": D(2) ** 50,
    "Ei": D(2) ** 60,
}


class TestParseQuantity:
    @pytest.mark.parametrize(
        ("text", "value"),
        [
            ("1", "1"),
            ("1.5", "1.5"),
            (".5", "0.5"),
            ("5.", "5"),
            ("1e3", "1000"),
            ("1E3", "1000"),
            ("2.5e-3", "0.0025"),
            ("1e+2", "100"),
            ("500m", "0.5"),
            ("100m", "0.1"),
            ("0.1m", "0.0001"),  # kept as written; Kubernetes would store 1m
            ("4k", "4000"),
            ("1M", "1000000"),
            ("1G", "1000000000"),
            ("1T", "1000000000000"),
            ("1P", "1000000000000000"),
            ("1E", "1000000000000000000"),  # exa, not an exponent
            ("2Ki", "2048"),
            ("128Mi", "134217728"),
            ("1.5Gi", "1610612736"),
            ("1Ti", "1099511627776"),
            ("1Pi", "1125899906842624"),
            ("1Ei", "1152921504606846976"),
            ("0", "0"),
            ("+3", "3"),
            ("-2", "-2"),  # signed, as in Kubernetes' grammar
            (" 2Gi\n", "2147483648"),  # surrounding whitespace from YAML
        ],
    )
    def test_it_reads_kubernetes_quantities_exactly(self, text, value):
        result = parse_quantity(text)

        assert isinstance(result, Decimal)
        assert result == D(value)
        assert str(result) == value

    @pytest.mark.parametrize(
        "text",
        [
            "",
            " ",
            ".",
            "e3",
            "1e",
            "Ki",
            "m",
            "1.5.5",
            "1 Gi",
            "1KiB",
            "1ki",
            "1K",  # kilo is lower-case k
            "1mi",
            "1e3Ki",
            "0x10",
            "1,5",
            "NaN",
            "Infinity",
            "1_000",
            "\u0661",  # ARABIC-INDIC DIGIT ONE: Decimal() would take it
        ],
    )
    def test_it_rejects_junk(self, text):
        with pytest.raises(ParseError, match="is not a Kubernetes quantity"):
            parse_quantity(text)

    @pytest.mark.parametrize("text", ["1e999999999", "9223372036854775808", "9Ei"])
    def test_it_rejects_quantities_larger_than_kubernetes_allows(self, text):
        with pytest.raises(ParseError, match="larger than"):
            parse_quantity(text)

    def test_it_accepts_the_largest_quantity(self):
        assert parse_quantity(str(QUANTITY_MAX)) == QUANTITY_MAX

    def test_it_rejects_what_it_cannot_keep_exactly(self):
        with pytest.raises(ParseError, match="out of range or too long"):
            parse_quantity("1e-999999999")


numbers = st.decimals(min_value=0, max_value=10**6, places=3)


@given(numbers, st.sampled_from(sorted(MULTIPLIER)))
def test_it_round_trips_a_number_and_a_suffix(number, suffix):
    assume(number * MULTIPLIER[suffix] <= QUANTITY_MAX)

    assert parse_quantity(f"{number:f}{suffix}") == number * MULTIPLIER[suffix]


@given(numbers, st.integers(-12, 12))
def test_it_round_trips_the_exponent_form(number, exponent):
    assert parse_quantity(f"{number:f}e{exponent}") == number.scaleb(exponent)


@given(st.text(max_size=30))
def test_it_either_parses_or_raises_parse_error(text):
    try:
        value = parse_quantity(text)
    except ParseError:
        return
    assert isinstance(value, Decimal) and value.is_finite()
