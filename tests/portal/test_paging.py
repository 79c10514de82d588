import pytest

from accounts.models import User
from portal.paging import counted_page
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
