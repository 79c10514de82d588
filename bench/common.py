"""What every benchmark needs: a database of its own, the portal served as in production,
peak memory of a command, and one table of figures.

Benchmarks measure ratios within one run (a rate against a reference measured minutes
apart on the same machine), because absolute timings on a shared machine are noise.
"""

import datetime as dt
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DEFAULT_SERVER = "postgres://postgres@127.0.0.1:5432"


class BenchError(RuntimeError):
    """A benchmark found something wrong (not slow: wrong). It fails loudly."""


def psycopg_url(url: str) -> str:
    return url.replace("postgres://", "postgresql://", 1)


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def recreate_database(url: str) -> None:
    """Drops and creates the database that `url` names, on the same server."""
    import psycopg

    name = database_name(url)
    if not name or not name.replace("_", "").isalnum():
        raise BenchError(f"{url!r}: give a plain database name (e.g. .../su_bench_ingest)")
    parts = urlsplit(psycopg_url(url))
    server = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def use_database(url: str) -> None:
    """Points this process's Django at `url`, setting Django up on first use. A caller
    that already set Django up (a suite of benchmarks) is switched over, as Django's
    test runner switches to its test database."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
    os.environ["DATABASE_URL"] = url
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
        return
    from django.db import connections

    from portal.env import database_from_url

    connections.close_all()
    connections["default"].settings_dict.update(database_from_url(url, base_dir=REPO))


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def portal_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a production process: DEBUG off, no broker (tasks inline)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    env.update(
        DEBUG="0",
        SECRET_KEY=os.environ.get("SECRET_KEY", "bench-only-secret-key"),
        ALLOWED_HOSTS="127.0.0.1",
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="portal.settings",
        LOG_LEVEL="WARNING",
        # Connections live through a whole run, so the CPU their backends spend is
        # still there to be counted at its end (production reconnects every 60 s).
        DATABASE_CONN_MAX_AGE="3600",
        # Plain HTTP on loopback, as a TLS-ending proxy hands requests to the portal:
        # without this, DEBUG off answers every request with a redirect to https://.
        SECURE_SSL_REDIRECT="0",
    )
    env.update(extra)
    return env


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    log: Path
    pid: int  # of gunicorn's master, which leads the process group of its workers

    def connection(self, timeout: float = 600) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def cpu_seconds(self) -> float:
        """CPU time used so far by gunicorn and its workers."""
        return sum(cpu_seconds(pid) for pid in process_group(self.pid))


def _stat(pid: int) -> list[str]:
    # The fields after the command name, which may itself hold spaces and parentheses.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a live process (0 if it is gone)."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_group(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat(int(entry))[2]) == pgid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def backend_cpu_seconds(conn, database: str) -> float:
    """CPU time used so far by the PostgreSQL backends serving `database`, except the
    one behind `conn` (a psycopg connection to the same server on this machine)."""
    pids = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        [database],
    ).fetchall()
    return sum(cpu_seconds(pid) for (pid,) in pids)


@contextmanager
def gunicorn(
    database_url: str, *, workers: int = 2, threads: int = 2, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Serves the portal as in production (gunicorn, DEBUG off) on a free port of
    127.0.0.1 until the block ends, however it ends. gthread workers, because the sync
    worker closes every connection and importers keep theirs alive. `env` adds to or
    overrides the production environment."""
    port = free_port()
    logdir = Path(tempfile.mkdtemp(prefix="bench-gunicorn-"))
    log = logdir / "gunicorn.log"
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "portal.wsgi",
        f"--bind=127.0.0.1:{port}",
        f"--workers={workers}",
        "--worker-class=gthread",
        f"--threads={threads}",
        "--keep-alive=75",
        # A 10,000-record batch on a slow path must not be killed as a hung worker.
        "--timeout=600",
        f"--error-logfile={log}",
    ]
    with open(log, "w") as out:
        process = subprocess.Popen(
            argv,
            cwd=REPO,
            env=portal_env(database_url, **(env or {})),
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own process group, so its workers stop with it.
            start_new_session=True,
        )
    # A SIGTERM to the benchmark must still stop the server: make it unwind the stack.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        _wait_until_up("127.0.0.1", port, process, log)
        yield Server("127.0.0.1", port, log, process.pid)
        shutil.rmtree(logdir, ignore_errors=True)  # kept when something went wrong
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(process)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _wait_until_up(host: str, port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"gunicorn exited with {process.returncode}:\n{log.read_text()}")
        conn = http.client.HTTPConnection(host, port, timeout=5)
        try:
            conn.request("GET", "/api/v1/allocations/")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
        finally:
            conn.close()
    raise BenchError(f"gunicorn did not answer within 60 s:\n{log.read_text()}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass


@dataclass(frozen=True)
class Measured:
    returncode: int
    seconds: float
    peak_rss_kib: int
    stdout: str
    stderr: str


# Linux carries a process's peak RSS across fork and exec, so a command started straight
# from this (large) process would report this process's peak as its own. A small launcher
# starts it instead and reports the command's wait4 figures.
_LAUNCHER = """
import json, os, subprocess, sys, time
began = time.monotonic()
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"status": status, "seconds": time.monotonic() - began,
               "maxrss": usage.ru_maxrss}, out)
"""


def run_measured(argv: list[str], *, env: dict[str, str]) -> Measured:
    """Runs a command to its end; its wall time and its own peak resident set size."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as report,
    ):
        subprocess.run(
            [sys.executable, "-c", _LAUNCHER, report.name, *argv],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=err,
            check=True,
        )
        figures = json.load(report)
        out.seek(0)
        err.seek(0)
        return Measured(
            os.waitstatus_to_exitcode(figures["status"]),
            figures["seconds"],
            figures["maxrss"],  # KiB on Linux
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def machine() -> str:
    cores = os.cpu_count() or 0
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB"
    except (ValueError, OSError):
        memory = ""
    return f"{platform.machine()}, {cores} cores{memory}, Python {platform.python_version()}"


def ratio(value: float, reference: float) -> float | None:
    return value / reference if reference else None


def row(figure: str, value: float, unit: str, reference: float | None = None, ref_name: str = ""):
    """One line of the table; `ratio` is value / reference when there is a reference."""
    return {
        "figure": figure,
        "value": value,
        "unit": unit,
        "reference": reference,
        "reference_name": ref_name,
        "ratio": ratio(value, reference) if reference is not None else None,
    }


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    return f"{text} {unit}".strip()


def markdown_table(rows: list[dict]) -> str:
    lines = ["| figure | value | reference | ratio |", "|---|---:|---|---:|"]
    for r in rows:
        reference = ""
        if r["reference"] is not None:
            reference = f"{r['reference_name']}: {_number(r['reference'], r['unit'])}"
        ratio_text = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(
            f"| {r['figure']} | {_number(r['value'], r['unit'])} | {reference} | {ratio_text} |"
        )
    return "\n".join(lines)


def write_results(name: str, figures: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return path
