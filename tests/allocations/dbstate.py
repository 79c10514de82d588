"""Database helpers for the service tests: proof that a refused call changed nothing,
and a way to run two calls at once on separate connections."""

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


# --- watching another connection wait for a lock (PostgreSQL) ---------------------------


def in_thread(fn: Callable[[], object]):
    """Starts fn in a thread on its own connection; returns (future, its backend pid)."""
    pid = []
    ready = threading.Event()

    def run():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pid.append(cursor.fetchone()[0])
            ready.set()
            return fn()
        except Exception as exc:
            return exc
        finally:
            ready.set()
            connection.close()

    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(run)
    pool.shutdown(wait=False)
    assert ready.wait(timeout=30) and pid, "the thread did not connect"
    return future, pid[0]


def waits_for_lock(pid: int, future, timeout: float = 10) -> bool:
    """Whether the backend `pid` ends up waiting for a lock before `future` is done."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while not future.done():
            cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
            row = cursor.fetchone()
            if row and row[0] == "Lock":
                return True
            assert time.monotonic() < deadline, f"backend {pid} neither finished nor waited"
            time.sleep(0.005)
    return False


def wait_until_blocked(pid: int, future) -> None:
    assert waits_for_lock(pid, future), f"backend {pid} finished without waiting for a lock"
