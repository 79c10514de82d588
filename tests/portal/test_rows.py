import uuid
from decimal import Decimal

import pytest

from allocations.models import Allocation
from portal.rows import fetch, link, to_su


@pytest.mark.django_db
class TestFetch:
    def test_amounts_flags_and_dates_have_their_python_types_on_every_database(self, allocation):
        Allocation.objects.filter(pk=allocation.pk).update(su_budget=Decimal("1234.5678"))
        allocation.refresh_from_db()
        rows = fetch(
            "SELECT a.code, a.su_budget, a.su_used, a.start, a.created, "
            "EXISTS (SELECT 1 FROM allocations_allocation b WHERE b.id = a.id) AS here "
            "FROM allocations_allocation a WHERE a.id = %(id)s",
            {"id": allocation.pk},
            decimals=["su_budget", "su_used"],
            bools=["here"],
            dates=["start"],
            datetimes=["created"],
            uuids=["code"],
        )
        assert len(rows) == 1
        row = rows[0]
        assert row["code"] == allocation.code
        assert row["su_budget"] == Decimal("1234.5678")
        assert isinstance(row["su_budget"], Decimal) and isinstance(row["su_used"], Decimal)
        assert row["here"] is True
        assert row["start"] == allocation.start
        assert row["created"] == Allocation.objects.get(pk=allocation.pk).created

    def test_no_rows_is_an_empty_list(self):
        assert fetch("SELECT id FROM allocations_allocation WHERE id = %s", [-1]) == []


def test_to_su_keeps_four_places_exactly():
    assert to_su(0.1) == Decimal("0.1000")
    assert to_su(12345678.1234) == Decimal("12345678.1234")
    assert to_su(None) is None
    assert to_su(Decimal("2.5")) == Decimal("2.5")


def test_link_gives_the_same_url_as_reverse():
    from django.urls import reverse

    code = uuid.uuid4()
    assert link("allocations:allocation")(code) == reverse("allocations:allocation", args=[code])


def test_link_refuses_a_view_without_one_code():
    from django.urls import NoReverseMatch

    with pytest.raises(NoReverseMatch):
        link("allocations:home")


@pytest.mark.django_db
def test_on_postgresql_a_statement_is_prepared_once_and_reused():
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    sql = "SELECT id FROM allocations_allocation WHERE id = %(id)s"
    fetch(sql, {"id": -1})
    fetch(sql, {"id": -2})
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
            ["SELECT id FROM allocations_allocation WHERE id = $1%"],
        )
        assert cursor.fetchone()[0] == 1
