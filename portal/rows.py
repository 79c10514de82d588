"""Plain rows for the busiest pages (the dashboard, the allocation page, the review queue).

Those pages read their rows with one hand-written SQL statement each, not a queryset:
building and compiling an ORM query with joins, EXISTS and window annotations cost more
than running it, and so did turning each row into three or four model instances. A row
here is a dict (the template language looks a name up in a dict before anything else),
with SU amounts as Decimal on every database and links built without a reverse() each.

The SQL must run on PostgreSQL and on SQLite: both answer EXISTS, CTEs and window
functions; SQLite answers booleans as 0 and 1 and decimals as floats, which fetch()
turns back into bool and exact Decimal.

On PostgreSQL these statements are prepared (cursor()): planning one of them took longer
than running it (0.4 to 1 ms against 0.1 to 0.3), and a prepared statement is planned
once per connection. They bind their parameters on the server, so a parameter that can
be NULL needs a CAST to say its type. The ORM's own queries are never prepared (Django
binds their parameters on the client). DATABASE_PREPARED_STATEMENTS=0 turns preparing
off, for a transaction-pooling PgBouncer older than 1.21.
"""

import datetime as dt
import functools
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal

from django.db import connection
from django.urls import get_script_prefix, reverse
from django.utils.dateparse import parse_date, parse_datetime

from allocations.conversion import SU_QUANTUM

# The one value reverse() is given: a UUID no object has, replaced by each row's own.
_SENTINEL = "00000000-0000-4000-8000-00000000beef"


def fetch(
    sql: str,
    params: dict | list | tuple,
    *,
    decimals: Iterable[str] = (),
    bools: Iterable[str] = (),
    dates: Iterable[str] = (),
    datetimes: Iterable[str] = (),
    uuids: Iterable[str] = (),
) -> list[dict]:
    """The rows of one statement as dicts keyed by column name. The columns named in
    decimals, bools, dates, datetimes and uuids get their Python type whatever the
    database answered (SQLite: floats, 0/1, ISO strings and bare hex)."""
    with cursor() as c:
        c.execute(sql, params)
        names = [column[0] for column in c.description]
        rows = [dict(zip(names, values, strict=True)) for values in c.fetchall()]
    if connection.vendor == "postgresql":
        return rows  # psycopg answers Decimal, bool, date, aware datetime and UUID already.
    converters = [
        *((name, to_su) for name in decimals),
        *((name, _to_bool) for name in bools),
        *((name, to_date) for name in dates),
        *((name, _to_datetime) for name in datetimes),
        *((name, _to_uuid) for name in uuids),
    ]
    for row in rows:
        for name, convert in converters:
            row[name] = convert(row[name])
    return rows


def cursor():
    """A cursor for hand-written statements: on PostgreSQL one that binds parameters on
    the server, so that psycopg prepares each statement (the connection's
    prepare_threshold, set in portal/env.py); elsewhere the usual cursor. Either way it is
    Django's cursor wrapper, so the statements count in query logs and tests."""
    if connection.vendor != "postgresql":
        return connection.cursor()
    from django.db.backends.postgresql.base import ServerBindingCursor
    from psycopg.pq import Format

    connection.close_if_health_check_failed()
    connection.ensure_connection()
    raw = ServerBindingCursor(connection.connection)
    # Results in binary: numerics, dates and UUIDs decode faster than from their text.
    raw.format = Format.BINARY
    with connection.wrap_database_errors:
        return connection._prepare_cursor(raw)


def to_su(value) -> Decimal | None:
    """An SU amount exactly as stored: SQLite's REAL answers go through their shortest
    repr, which round-trips the four places an SU column holds."""
    if value is None or isinstance(value, Decimal):
        return value
    return Decimal(str(value)).quantize(SU_QUANTUM)


def _to_bool(value) -> bool | None:
    return None if value is None else bool(value)


def to_date(value) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    return parse_date(value)


def _to_datetime(value) -> dt.datetime | None:
    if value is None:
        return None
    parsed = value if isinstance(value, dt.datetime) else parse_datetime(value)
    # Django's SQLite backend stores aware datetimes as naive UTC.
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed


def _to_uuid(value) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    return uuid.UUID(value)


def columns(model, alias: str) -> str:
    """Every column of a model, qualified by the table's alias in a statement, in the
    order instance() takes their values."""
    quote = connection.ops.quote_name
    return ", ".join(f"{alias}.{quote(f.column)}" for f in model._meta.concrete_fields)


@functools.cache
def _converters(model, vendor: str) -> tuple[list[str], list[tuple]]:
    """The attnames of a model's columns, and for each its column expression and the
    functions the ORM converts its database value with (computed once per model)."""
    fields = list(model._meta.concrete_fields)
    converters = []
    for f in fields:
        expression = f.get_col(model._meta.db_table)
        functions = connection.ops.get_db_converters(expression) + f.get_db_converters(connection)
        converters.append((expression, functions))
    return [f.attname for f in fields], converters


def instance(model, values):
    """A model instance from the values of columns(model, alias), converted as the ORM
    converts them (SQLite hands back decimals and times as text); None when its primary
    key is NULL (an outer join that found no row)."""
    if values[0] is None:
        return None
    attnames, converters = _converters(model, connection.vendor)
    converted = []
    for value, (expression, functions) in zip(values, converters, strict=True):
        for convert in functions:
            value = convert(value, expression, connection)
        converted.append(value)
    return model.from_db(connection.alias, attnames, converted)


def instances(row, models) -> tuple[list, list]:
    """Splits one row of columns(model, alias) for each model in turn, then whatever
    columns follow: (the instances, the rest of the row)."""
    found, i = [], 0
    for model in models:
        n = len(model._meta.concrete_fields)
        found.append(instance(model, row[i : i + n]))
        i += n
    return found, list(row[i:])


@functools.cache
def _around(name: str, prefix: str) -> tuple[str, str]:
    pattern = reverse(name, args=[_SENTINEL])
    if pattern.count(_SENTINEL) != 1:
        raise ValueError(f"{name} does not take exactly one code")
    head, tail = pattern.split(_SENTINEL)
    return head, tail


def link(name: str) -> Callable[[object], str]:
    """A function from an object's code to the URL of the named view that takes one code:
    reverse() once per process (and script prefix), then a string format for each."""
    head, tail = _around(name, get_script_prefix())
    return lambda code: f"{head}{code}{tail}"
