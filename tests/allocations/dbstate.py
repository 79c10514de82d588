"""Database helpers for the service tests: proof that a refused call changed nothing,
and a way to run two calls at once on separate connections."""

import threading
from collections.abc import Callable
from contextlib import contextmanager

from django.apps import apps
from django.db import connection


def db_state() -> dict[str, list[dict]]:
    models = [
        model
        for app in ("accounts", "allocations")
        for model in apps.get_app_config(app).get_models(include_auto_created=True)
    ]
    return {model._meta.label: list(model.objects.order_by("pk").values()) for model in models}


@contextmanager
def unchanged():
    """`with unchanged(), pytest.raises(...)`: the refusal must leave every row as it was."""
    before = db_state()
    yield
    after = db_state()
    changed = [label for label in before if before[label] != after[label]]
    assert not changed, f"a refused call changed {', '.join(changed)}"


def concurrently(*calls: Callable[[], object]) -> list[object]:
    """Runs the calls in threads, each on its own connection, released together.
    Returns what each returned or raised. Needs a transactional test on PostgreSQL."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[object] = [None] * len(calls)

    def run(i: int, call: Callable[[], object]) -> None:
        try:
            barrier.wait()
            outcomes[i] = call()
        except Exception as exc:  # the outcome under test
            outcomes[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes
