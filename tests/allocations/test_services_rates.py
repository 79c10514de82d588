import datetime as dt
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection

from allocations import services
from allocations.models import Rate
from tests.allocations.dbstate import concurrently, unchanged
from tests.conftest import RATE_START, usage


def at(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


JAN, FEB, MAR, APR = at(2026, 1, 1), at(2026, 2, 1), at(2026, 3, 1), at(2026, 4, 1)


@pytest.fixture
def a100(cluster):
    """A resource with one closed rate window, [Feb, Mar) 2026."""
    resource = cluster.resources.create(name="GPU A100", kind="GPU", unit="GPU")
    services.rate_add(actor=None, resource=resource, su_per_unit_hour="1.5", start=FEB, end=MAR)
    return resource


class TestRateAdd:
    def test_an_admin_adds_a_window(self, a100, dana):
        rate = services.rate_add(
            actor=dana,
            resource=a100,
            su_per_unit_hour="1.75",
            start=MAR,
            end=APR,
            reason="New contract",
        )

        rate.refresh_from_db()
        assert (rate.su_per_unit_hour, rate.start, rate.end) == (
            Decimal("1.75"),
            MAR,
            APR,
        )
        assert (rate.created_by, rate.reason) == (dana, "New contract")

    @pytest.mark.parametrize(
        ("start", "end"),
        [
            pytest.param(MAR, APR, id="after"),
            pytest.param(JAN, FEB, id="before"),
            pytest.param(MAR, None, id="open-after"),
        ],
    )
    def test_it_allows_adjacent_windows(self, a100, dana, start, end):
        services.rate_add(actor=dana, resource=a100, su_per_unit_hour="2", start=start, end=end)

        assert a100.rates.count() == 2

    @pytest.mark.parametrize(
        ("start", "end"),
        [
            pytest.param(at(2026, 2, 15), APR, id="overlaps-the-end"),
            pytest.param(JAN, at(2026, 2, 1, 0, 0, 1), id="overlaps-the-start"),
            pytest.param(at(2026, 2, 10), at(2026, 2, 20), id="inside"),
            pytest.param(JAN, APR, id="around"),
            pytest.param(FEB, MAR, id="same"),
            pytest.param(JAN, None, id="open-from-before"),
            pytest.param(at(2026, 2, 28, 23, 59, 59), None, id="open-from-inside"),
        ],
    )
    def test_it_refuses_an_overlap_naming_the_window(self, a100, dana, start, end):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.rate_add(actor=dana, resource=a100, su_per_unit_hour="2", start=start, end=end)
        assert excinfo.value.message_dict == {
            "start": [
                "This window overlaps the rate window 2026-02-01 00:00 to 2026-03-01 00:00 UTC "
                "(1.500000 SU per GPU-hour)."
            ]
        }

    def test_it_names_an_open_window_it_overlaps(self, gpu, dana):
        with unchanged(), pytest.raises(ValidationError, match="2025-01-01 00:00 to open UTC"):
            services.rate_add(actor=dana, resource=gpu, su_per_unit_hour="3", start=MAR)

    def test_windows_of_other_resources_do_not_overlap(self, a100, cluster, dana):
        h100 = cluster.resources.create(name="GPU H100", kind="GPU", unit="GPU")

        rate = services.rate_add(actor=dana, resource=h100, su_per_unit_hour="3", start=JAN)

        assert rate.pk is not None

    @pytest.mark.parametrize("end", [FEB, JAN], ids=["empty", "reversed"])
    def test_it_refuses_a_window_ending_before_it_starts(self, cluster, dana, end):
        resource = cluster.resources.create(name="CPU2", kind="CPU", unit="core")
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.rate_add(
                actor=dana, resource=resource, su_per_unit_hour="1", start=FEB, end=end
            )
        assert "end" in excinfo.value.message_dict

    @pytest.mark.parametrize("rate", ["-0.000001", "-2", 2.5, "NaN", "0.0000001", "two"])
    def test_it_refuses_a_rate_that_is_not_an_exact_non_negative_amount(self, cluster, dana, rate):
        resource = cluster.resources.create(name="CPU2", kind="CPU", unit="core")
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.rate_add(actor=dana, resource=resource, su_per_unit_hour=rate, start=FEB)
        assert "su_per_unit_hour" in excinfo.value.message_dict

    def test_a_rate_may_be_zero(self, cluster, dana):
        resource = cluster.resources.create(name="Login", kind="OTHER", unit="node")

        rate = services.rate_add(actor=dana, resource=resource, su_per_unit_hour="0", start=FEB)

        assert rate.su_per_unit_hour == 0

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
    def test_it_refuses_anyone_but_the_clusters_admins(self, request, a100, who):
        actor = request.getfixturevalue(who)
        with unchanged(), pytest.raises(PermissionDenied):
            services.rate_add(actor=actor, resource=a100, su_per_unit_hour="1", start=MAR)


class TestRateClose:
    def test_an_admin_closes_an_open_window(self, gpu, dana):
        rate = gpu.rates.get()

        services.rate_close(actor=dana, rate=rate, end=MAR, reason="Price change")

        rate.refresh_from_db()
        assert (rate.start, rate.end) == (RATE_START, MAR)
        record = rate.corrections.get()
        assert (record.old_end, record.new_end) == (None, MAR)
        assert record.old_su_per_unit_hour == record.new_su_per_unit_hour == rate.su_per_unit_hour
        assert (record.actor, record.reason) == (dana, "Price change")

    def test_closing_then_adding_changes_the_rate_at_the_boundary(self, gpu, dana):
        services.rate_close(actor=dana, rate=gpu.rates.get(), end=MAR)
        services.rate_add(actor=dana, resource=gpu, su_per_unit_hour="3", start=MAR)

        book = services.RateBook([gpu.pk])
        assert book.rate_at(gpu.pk, MAR - dt.timedelta(microseconds=1)).su_per_unit_hour == 2
        assert book.rate_at(gpu.pk, MAR).su_per_unit_hour == 3

    @pytest.mark.parametrize(
        "end",
        [
            pytest.param(at(2026, 2, 1), id="before"),
            pytest.param(at(2026, 3, 1, 12), id="at-the-charge-time"),
        ],
    )
    def test_it_refuses_to_close_before_usage_charged_at_the_rate(
        self, allocation, bob, gpu, dana, end
    ):
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, bob, gpu, "1", 1)
        )
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.rate_close(actor=dana, rate=gpu.rates.get(), end=end)
        assert excinfo.value.message_dict == {
            "end": ["1 usage records were charged at this rate after that time."]
        }

    def test_it_closes_after_the_last_charge(self, allocation, bob, gpu, dana):
        services.usage_record(
            cluster=allocation.cluster, record=usage(allocation, bob, gpu, "1", 1)
        )

        rate = services.rate_close(actor=dana, rate=gpu.rates.get(), end=at(2026, 3, 1, 12, 0, 1))

        assert rate.end == at(2026, 3, 1, 12, 0, 1)

    @pytest.mark.parametrize("end", [FEB, JAN], ids=["empty", "reversed"])
    def test_it_refuses_an_end_not_after_the_start(self, a100, dana, end):
        with unchanged(), pytest.raises(ValidationError) as excinfo:
            services.rate_close(actor=dana, rate=a100.rates.get(), end=end)
        assert "end" in excinfo.value.message_dict

    def test_it_refuses_extending_a_window_into_the_next(self, a100, dana):
        services.rate_add(actor=dana, resource=a100, su_per_unit_hour="2", start=MAR)
        with (
            unchanged(),
            pytest.raises(ValidationError, match="overlaps the rate window 2026-03-01"),
        ):
            services.rate_close(actor=dana, rate=a100.rates.get(start=FEB), end=at(2026, 3, 2))

    @pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
    def test_it_refuses_anyone_but_the_clusters_admins(self, request, gpu, who):
        actor = request.getfixturevalue(who)
        with unchanged(), pytest.raises(PermissionDenied):
            services.rate_close(actor=actor, rate=gpu.rates.get(), end=MAR)


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="SQLite keeps 15 significant digits of a NUMERIC (it stores REAL)",
)
def test_a_rate_of_the_full_scale_is_stored_exactly(cluster, dana):
    resource = cluster.resources.create(name="X", kind="OTHER", unit="u")

    rate = services.rate_add(
        actor=dana, resource=resource, su_per_unit_hour="12345678901234.123456", start=JAN
    )

    assert Rate.objects.get(pk=rate.pk).su_per_unit_hour == Decimal("12345678901234.123456")


def test_a_rate_is_stored_exactly_to_its_last_place(cluster, dana):
    resource = cluster.resources.create(name="X", kind="OTHER", unit="u")

    rate = services.rate_add(
        actor=dana, resource=resource, su_per_unit_hour="123456789.123456", start=JAN
    )

    assert Rate.objects.get(pk=rate.pk).su_per_unit_hour == Decimal("123456789.123456")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs row locks (PostgreSQL)")
@pytest.mark.django_db(transaction=True)
def test_two_overlapping_windows_added_at_once_are_not_both_kept(a100, dana, staff):
    outcomes = concurrently(
        lambda: services.rate_add(actor=dana, resource=a100, su_per_unit_hour="2", start=MAR),
        lambda: services.rate_add(actor=staff, resource=a100, su_per_unit_hour="3", start=MAR),
    )

    assert sorted(type(o).__name__ for o in outcomes) == ["Rate", "ValidationError"]
    assert a100.rates.count() == 2
