"""The SU rule: su = round_half_even(raw_unit_seconds * su_per_unit_hour / 3600, 4 places).
Pure functions: no database."""

from decimal import Context, Decimal
from fractions import Fraction

import pytest
from django.core.exceptions import ValidationError
from hypothesis import given
from hypothesis import strategies as st

from allocations.conversion import SU_LIMIT, parse_decimal, parse_rate, parse_su, su_for

D = Decimal


def exact_su(raw: Decimal, rate: Decimal) -> Decimal:
    """The rule computed with fractions; round() on a Fraction rounds half to even."""
    ten_thousandths = round(Fraction(raw) * Fraction(rate) / 3600 * 10_000)
    return D(ten_thousandths).scaleb(-4, context=Context(prec=100))


raws = st.decimals(min_value=0, max_value=D(10) ** 21 - 1, places=3)
rates = st.decimals(min_value=0, max_value=D(10) ** 14 - 1, places=6)


class TestSuFor:
    @pytest.mark.parametrize(
        ("raw", "rate", "su"),
        [
            ("3600", "1", "1.0000"),  # one unit-hour at 1 SU
            ("14400", "2", "8.0000"),  # 4 GPUs for an hour at 2 SU
            ("36000", "0.1", "1.0000"),  # "10 GPU-hours = 1 SU"
            ("1", "1", "0.0003"),  # one unit-second: 0.000277...
            ("0", "5", "0.0000"),
            ("3600", "0", "0.0000"),
            ("1", "0.000001", "0.0000"),
        ],
    )
    def test_it_converts_unit_seconds_at_su_per_unit_hour(self, raw, rate, su):
        result = su_for(D(raw), D(rate))

        assert result == D(su)
        assert result.as_tuple().exponent == -4

    @pytest.mark.parametrize(
        ("raw", "su"),
        [
            ("0.18", "0.0000"),  # 0.00005 rounds to the even 0.0000
            ("0.54", "0.0002"),  # 0.00015 rounds to the even 0.0002
            ("0.9", "0.0002"),  # 0.00025 rounds to the even 0.0002
            ("1.26", "0.0004"),  # 0.00035 rounds to the even 0.0004
            ("0.180001", "0.0001"),  # just past half-way rounds up
            ("0.179999", "0.0000"),  # just below half-way rounds down
        ],
    )
    def test_it_rounds_half_to_even_at_four_places(self, raw, su):
        assert su_for(D(raw), D(1)) == D(su)

    def test_half_even_does_not_drift_a_sum_of_halves_upward(self):
        halves = [su_for(D(raw), D(1)) for raw in ("0.18", "0.54", "0.9", "1.26")]

        # Exactly 0.00005 + 0.00015 + 0.00025 + 0.00035 = 0.0008; half-up would give 0.0010.
        assert sum(halves) == D("0.0008")

    def test_it_is_exact_at_the_largest_amounts(self):
        raw, rate = D("999999999999999999999.999"), D("99999999999999.999999")

        assert su_for(raw, rate) == exact_su(raw, rate)

    @given(raw=raws, rate=rates)
    def test_it_equals_the_exact_rule(self, raw, rate):
        assert su_for(raw, rate) == exact_su(raw, rate)


class TestParseSu:
    @pytest.mark.parametrize(
        ("value", "amount"),
        [
            ("12.5", "12.5"),
            (" 7 ", "7"),
            (12, "12"),
            (D("1.2300"), "1.23"),
            ("1.00010", "1.0001"),  # trailing zeros are not places
            ("1e3", "1000"),
            ("-250", "-250"),  # the sign is for services to judge
            ("9999999999999999.9999", "9999999999999999.9999"),
        ],
    )
    def test_it_accepts_exact_amounts(self, value, amount):
        assert parse_su(value) == D(amount)

    def test_it_turns_minus_zero_into_zero(self):
        assert parse_su("-0").is_signed() is False

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            pytest.param(1.5, "not floating point", id="float"),
            pytest.param(0.1, "not floating point", id="float-0.1"),
            pytest.param("NaN", "finite", id="NaN"),
            pytest.param("sNaN", "finite", id="sNaN"),
            pytest.param("Infinity", "finite", id="Infinity"),
            pytest.param("-inf", "finite", id="-inf"),
            pytest.param("1.00001", "at most 4 decimal places", id="five-places"),
            pytest.param("0.00000001", "at most 4 decimal places", id="tiny"),
            pytest.param("abc", "is not a number", id="non-numeric"),
            pytest.param("", "is not a number", id="empty"),
            pytest.param("1,000", "is not a number", id="thousands-separator"),
            pytest.param(None, "is not a number", id="None"),
            pytest.param("10000000000000000", "too large", id="huge"),
            pytest.param("-10000000000000000", "too large", id="huge-negative"),
            pytest.param("1e999999999", "too large", id="huge-exponent"),
            pytest.param("-1E+1000000", "too large", id="huge-negative-exponent"),
            pytest.param("1e-999999999", "at most 4 decimal places", id="tiny-exponent"),
        ],
    )
    def test_it_refuses_what_is_not_an_exact_su_amount(self, value, message):
        with pytest.raises(ValidationError) as excinfo:
            parse_su(value, field="su_cap")
        assert list(excinfo.value.message_dict) == ["su_cap"]
        assert message in excinfo.value.message_dict["su_cap"][0]

    def test_a_limit_is_the_first_amount_too_large(self):
        with pytest.raises(ValidationError):
            parse_su(SU_LIMIT)
        assert parse_su(SU_LIMIT - D("0.0001")) == SU_LIMIT - D("0.0001")


class TestParseRate:
    def test_it_keeps_six_places(self):
        assert parse_rate("0.000001") == D("0.000001")

    def test_it_refuses_a_seventh_place(self):
        with pytest.raises(ValidationError) as excinfo:
            parse_rate("0.0000001")
        assert "su_per_unit_hour" in excinfo.value.message_dict

    def test_raw_amounts_keep_their_own_scale(self):
        assert parse_decimal("123.456", field="raw", places=3, digits=24) == D("123.456")
        with pytest.raises(ValidationError):
            parse_decimal("123.4567", field="raw", places=3, digits=24)
