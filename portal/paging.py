"""Pages of a list that cost one query: the rows of the page carry the number of rows in
the whole list (a window COUNT, which the database evaluates before LIMIT and OFFSET), so
the paginator does not run a COUNT of its own first. Used by the busiest lists, where the
COUNT cost as much as the rows.

Page numbers behave as with Paginator.get_page: anything that is not a number is the
first page, and a number past either end is the last page."""

from collections.abc import Callable

from django.core.paginator import Page, Paginator
from django.db.models import Count, QuerySet, Window
from django.utils.functional import cached_property


class _CountedPaginator(Paginator):
    def __init__(self, count: int, per_page: int):
        super().__init__([], per_page)
        self._count = count

    @cached_property
    def count(self) -> int:
        return self._count


def _number(value) -> int | None:
    """The page number asked for: 1 if it is not a number, None if it is below 1."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            return 1
        if not as_float.is_integer():
            return 1
        number = int(as_float)
    return number if number >= 1 else None


def counted_page(qs: QuerySet, page: str | None, per_page: int) -> Page:
    number = _number(page)
    if number is not None:
        bottom = (number - 1) * per_page
        rows = list(qs.annotate(_rows_in_list=Window(Count("pk")))[bottom : bottom + per_page])
        if rows or number == 1:
            count = rows[0]._rows_in_list if rows else 0
            return Page(rows, number, _CountedPaginator(count, per_page))
    # Past either end: the last page, as Paginator.get_page does (two more queries, only
    # for a page number nobody links to).
    return Paginator(qs, per_page).get_page(page)


def page_of_rows(fetch: Callable[..., list[dict]], page: str | None, per_page: int) -> Page:
    """counted_page for plain SQL (portal/rows.py): fetch(limit=, offset=) answers the rows
    of one page, each carrying the number of rows in the whole list as rows_in_list
    (COUNT(*) OVER (), evaluated before LIMIT and OFFSET)."""
    number = _number(page)
    if number is not None:
        rows = fetch(limit=per_page, offset=(number - 1) * per_page)
        if rows or number == 1:
            count = rows[0]["rows_in_list"] if rows else 0
            return Page(rows, number, _CountedPaginator(count, per_page))
    # Past either end: the last page, as Paginator.get_page does.
    first = fetch(limit=per_page, offset=0)
    count = first[0]["rows_in_list"] if first else 0
    last = max(1, -(-count // per_page))
    rows = first if last == 1 else fetch(limit=per_page, offset=(last - 1) * per_page)
    return Page(rows, last, _CountedPaginator(count, per_page))
