import pytest

from accounts.models import User
from portal.paging import counted_page, page_of_rows
from tests.conftest import make_user


@pytest.fixture
def users(db):
    for i in range(7):
        make_user(f"u{i}")
    return User.objects.order_by("username")


class TestCountedPage:
    def test_it_counts_the_whole_list_in_the_page_query(self, users, django_assert_num_queries):
        with django_assert_num_queries(1):
            page = counted_page(users, "2", 3)
            names = [u.username for u in page]
        assert names == ["u3", "u4", "u5"]
        assert page.paginator.count == 7
        assert page.paginator.num_pages == 3
        assert page.has_previous() and page.has_next()

    def test_the_last_page_holds_the_rest(self, users):
        page = counted_page(users, "3", 3)
        assert [u.username for u in page] == ["u6"]
        assert not page.has_next()

    @pytest.mark.parametrize("number", [None, "", "junk", "1.5"])
    def test_anything_but_a_number_is_the_first_page(self, users, number):
        page = counted_page(users, number, 3)
        assert page.number == 1
        assert [u.username for u in page] == ["u0", "u1", "u2"]

    @pytest.mark.parametrize("number", ["0", "-2", "4", "999"])
    def test_a_number_past_either_end_is_the_last_page(self, users, number):
        page = counted_page(users, number, 3)
        assert page.number == 3
        assert [u.username for u in page] == ["u6"]

    def test_an_empty_list_is_one_empty_page(self, db):
        page = counted_page(User.objects.none().order_by("pk"), None, 3)
        assert list(page) == []
        assert page.paginator.count == 0
        assert page.paginator.num_pages == 1


class TestPageOfRows:
    """page_of_rows pages a plain SQL statement the same way counted_page pages a queryset."""

    SQL = (
        "SELECT username, COUNT(*) OVER () AS rows_in_list FROM accounts_user "
        "ORDER BY username LIMIT %s OFFSET %s"
    )

    def fetch(self, limit, offset):
        from portal.rows import fetch

        return fetch(self.SQL, [limit, offset])

    def test_one_query_gives_the_rows_and_the_count(self, users, django_assert_num_queries):
        with django_assert_num_queries(1):
            page = page_of_rows(self.fetch, "2", 3)
        assert [r["username"] for r in page] == ["u3", "u4", "u5"]
        assert page.paginator.count == 7
        assert page.paginator.num_pages == 3

    @pytest.mark.parametrize("number", [None, "", "junk", "1.5"])
    def test_anything_but_a_number_is_the_first_page(self, users, number):
        page = page_of_rows(self.fetch, number, 3)
        assert page.number == 1
        assert [r["username"] for r in page] == ["u0", "u1", "u2"]

    @pytest.mark.parametrize("number", ["0", "-2", "4", "999"])
    def test_a_number_past_either_end_is_the_last_page(self, users, number):
        page = page_of_rows(self.fetch, number, 3)
        assert page.number == 3
        assert [r["username"] for r in page] == ["u6"]

    def test_an_empty_list_is_one_empty_page(self, db):
        page = page_of_rows(self.fetch, "3", 3)
        assert page.number == 1
        assert list(page) == []
        assert page.paginator.count == 0
