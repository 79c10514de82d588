"""Usage ingestion end to end: a real trace posted through the HTTP API, against a raw COPY.

    python bench/ingest.py [--jobs N] [--database-url postgres://.../su_bench_ingest]

In one run, on a fresh PostgreSQL database:
1. builds the site the trace needs (a cluster, a CPU resource with a rate and a TRES
   mapping, a user per trace user, an allocation per group with its members, an importer
   token) through the services;
2. turns the trace into usage records with the project's own parser and mapping;
3. serves the portal with gunicorn (DEBUG off) and posts every record in batches of
   10,000 over one keep-alive connection, timed;
4. posts the same batches again: every record must come back a duplicate, 0 SU charged;
5. COPYs the same rows (the usage table's columns, as Python values, binary) into a bare
   logged table with no index or constraint, one transaction per 10,000 rows, three
   times: the fastest is the reference rate;
6. runs `manage.py import_usage` on the trace and on the trace four times over (job ids
   shifted) and compares their peak resident memory: near 1 means memory is flat;
7. checks every maintained total against its records (ledger_drift).
It prints one markdown table and writes the figures as JSON to bench/results/.

`run()` returns the same figures as a dict (its "rows" are the table's rows).
"""

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    DEFAULT_SERVER,
    REPO,
    BenchError,
    backend_cpu_seconds,
    cpu_seconds,
    database_name,
    gunicorn,
    machine,
    markdown_table,
    migrate,
    portal_env,
    psycopg_url,
    recreate_database,
    row,
    run_measured,
    use_database,
    write_results,
)

# The whole LANL trace beside the checkout when it is there; otherwise the slice of it the
# demo ships (26,627 jobs), so a clone alone can run the benchmark at a smaller scale.
_FULL_TRACE = REPO.parent / "shared" / "data" / "LANL-CM5-1994-4.1-cln.swf.gz"
TRACE = (
    _FULL_TRACE if _FULL_TRACE.exists() else REPO / "allocations" / "demo" / "lanl-cm5-slice.swf.gz"
)
DEFAULT_URL = f"{DEFAULT_SERVER}/su_bench_ingest"
BATCH = 10_000
CLUSTER = "cm5"
# Job ids of the k-th copy of the trace are shifted by k * SHIFT (LANL's largest is 201,387).
SHIFT = 10_000_000
COPIES = 4
# The reference is the fastest of a few COPYs: the ratio errs against the portal.
COPY_REPEATS = 3
USAGE_COLUMNS = (
    "cluster_id",
    "allocation_id",
    "user_id",
    "job_id",
    "resource_id",
    "raw_unit_seconds",
    "rate_id",
    "su_amount",
    "charged_at",
    "started_at",
    "ended_at",
    "recorded_at",
)


def write_trace(source: Path, target: Path, *, jobs: int | None, copies: int = 1) -> int:
    """Writes the trace's header and its first `jobs` job lines, `copies` times over with
    shifted job ids, as plain text. Returns the number of job lines written."""
    from allocations.parsers import open_text

    header, body = [], []
    with open_text(source) as lines:
        for line in lines:
            if line.startswith(";"):
                if not body:
                    header.append(line)
                continue
            if not line.strip():
                continue
            if jobs is not None and len(body) >= jobs:
                break
            body.append(line)
    with open(target, "w") as out:
        out.writelines(header)
        for k in range(copies):
            for line in body:
                number, rest = line.lstrip().split(maxsplit=1)
                out.write(f"{int(number) + k * SHIFT} {rest}")
    return len(body) * copies


def trace_people(path: Path) -> tuple[set[str], set[str], set[tuple[str, str]]]:
    """The users, the accounts and who charges which account, as the SWF parser reads them."""
    from allocations.parsers import JobRecord, open_text, parse_swf

    users, accounts, pairs = set(), set(), set()
    with open_text(path) as lines:
        for item in parse_swf(lines):
            if isinstance(item, JobRecord) and item.account:
                users.add(item.user)
                accounts.add(item.account)
                pairs.add((item.user, item.account))
    return users, accounts, pairs


def build_site(path: Path) -> dict:
    """The cluster and everyone the trace charges, built through the services."""
    import datetime as dt

    from accounts.services import organization_create, user_create
    from accounts.tokens import api_token_issue
    from allocations import services
    from allocations.models import Cluster, Resource, TresMapping

    users, accounts, pairs = trace_people(path)
    org = organization_create(name="Los Alamos National Laboratory")
    admin = user_create(username="cm5-admin", email="cm5-admin@example.org", organization=org)
    pi = user_create(username="cm5-pi", email="cm5-pi@example.org", organization=org)
    cluster = Cluster.objects.create(name=CLUSTER, title="Thinking Machines CM-5")
    cluster.admins.add(admin)
    cpu = Resource.objects.create(cluster=cluster, name="CPU", kind="CPU", unit="core", amount=1024)
    services.rate_add(
        actor=admin,
        resource=cpu,
        su_per_unit_hour="0.01",
        start=dt.datetime(1994, 1, 1, tzinfo=dt.UTC),
    )
    TresMapping.objects.create(cluster=cluster, tres="cpu", resource=cpu)
    people = {
        name: user_create(username=name, email=f"{name}@example.org", organization=org)
        for name in sorted(users)
    }
    project = services.project_create(actor=pi, title="CM-5 production", pi=pi)
    allocations = {}
    for account in sorted(accounts):
        request = services.allocation_request_create(
            actor=pi,
            project=project,
            cluster=cluster,
            name=account,
            resources=[cpu],
            su_amount="1000000",
            start=dt.date(1994, 1, 1),
            end=dt.date(1997, 12, 31),
            justification="LANL CM-5 trace",
        )
        services.change_request_approve(actor=admin, request=request)
        allocations[account] = request.allocation
    for user, account in sorted(pairs):
        services.membership_add(actor=pi, allocation=allocations[account], user=people[user])
    token = api_token_issue(actor=admin, cluster=cluster, name="bench importer")
    return {
        "cluster": cluster,
        "token": token.secret,
        "users": len(users),
        "allocations": len(accounts),
        "memberships": len(pairs),
    }


def usage_batches(path: Path, cluster) -> tuple[list[bytes], int, int]:
    """The trace as request bodies of BATCH records each, with the project's parser and
    TRES mapping. Returns the bodies, the number of records and of unusable job lines."""
    from allocations.mapping import MappingError, mappings_for, usage_records
    from allocations.parsers import JobRecord, open_text, parse_swf

    mappings = mappings_for(cluster)
    records: list[dict] = []
    unusable = 0
    with open_text(path) as lines:
        for item in parse_swf(lines):
            if not isinstance(item, JobRecord):
                unusable += 1
                continue
            try:
                records.extend(usage_records(item, mappings))
            except MappingError:
                unusable += 1
    bodies = [
        json.dumps({"cluster": cluster.name, "records": records[i : i + BATCH]}).encode()
        for i in range(0, len(records), BATCH)
    ]
    return bodies, len(records), unusable


@dataclass
class Posted:
    seconds: float
    answers: Counter
    connections: int
    portal_cpu: float  # seconds of CPU: gunicorn and its workers
    database_cpu: float  # the PostgreSQL backends that served them


def post_all(server, token: str, bodies: list[bytes], database_url: str) -> Posted:
    """Posts the bodies one after another on one keep-alive connection, timed, with the
    CPU time the portal and its database spent on them."""
    import psycopg

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    totals: Counter = Counter()
    charged = Decimal(0)
    connections = 0
    name = database_name(database_url)
    with psycopg.connect(psycopg_url(database_url), autocommit=True) as monitor:
        portal_before = server.cpu_seconds()
        database_before = backend_cpu_seconds(monitor, name)
        conn = server.connection()
        began = time.perf_counter()
        try:
            for number, body in enumerate(bodies):
                if conn.sock is None:
                    connections += 1
                conn.request("POST", "/api/v1/usage/", body=body, headers=headers)
                response = conn.getresponse()
                answer = response.read()
                if response.status != 200:
                    excerpt = answer[:2000].decode(errors="replace")
                    raise BenchError(f"batch {number}: HTTP {response.status}: {excerpt}")
                result = json.loads(answer)
                for key in ("created", "duplicates", "corrected"):
                    totals[key] += result[key]
                charged += Decimal(result["su_charged"])
        finally:
            conn.close()
        seconds = time.perf_counter() - began
        portal_cpu = server.cpu_seconds() - portal_before
        database_cpu = backend_cpu_seconds(monitor, name) - database_before
    totals["su_charged"] = charged
    return Posted(seconds, totals, connections, portal_cpu, database_cpu)


@dataclass
class Copied:
    seconds: float  # the fastest run
    rows: int
    client_cpu: float  # of that run: this process, formatting the rows
    database_cpu: float  # and its backend


def copy_reference(url: str, *, repeats: int = COPY_REPEATS, like_usage: bool = False) -> Copied:
    """COPYs the usage rows the ingest wrote, as Python values, into a bare table with
    the same columns (logged like the usage table, no index, no constraint), binary as
    the portal stages them, one transaction per BATCH rows as the API commits. The
    fastest of `repeats` runs counts.

    like_usage: into a table built like the usage table instead (its identity column,
    indexes, checks and foreign keys): what PostgreSQL itself can write into a table
    that keeps what the portal needs of it (exactly-once, the jobs list, the charts,
    the ledger's references), whatever code feeds it."""
    import psycopg

    columns = ", ".join(USAGE_COLUMNS)
    runs = []
    with psycopg.connect(psycopg_url(url)) as conn:
        rows = conn.execute(f"SELECT {columns} FROM allocations_usage ORDER BY id").fetchall()  # noqa: S608
        types = [
            t
            for (t,) in conn.execute(
                "SELECT format_type(atttypid, NULL) FROM pg_attribute "
                "WHERE attrelid = 'allocations_usage'::regclass AND attname = ANY(%s) "
                "ORDER BY array_position(%s, attname::text)",
                [list(USAGE_COLUMNS), list(USAGE_COLUMNS)],
            )
        ]
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.execute("DROP TABLE IF EXISTS bench_copy_usage")
        if like_usage:
            conn.execute("CREATE TABLE bench_copy_usage (LIKE allocations_usage INCLUDING ALL)")
            for (definition,) in conn.execute(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = 'allocations_usage'::regclass AND contype = 'f'"
            ).fetchall():
                conn.execute(f"ALTER TABLE bench_copy_usage ADD {definition}")
        else:
            conn.execute("CREATE TABLE bench_copy_usage (LIKE allocations_usage)")
            conn.execute("ALTER TABLE bench_copy_usage DROP COLUMN id")
        conn.commit()
        for _ in range(repeats):
            conn.execute("TRUNCATE bench_copy_usage RESTART IDENTITY")
            conn.commit()
            began, client, server = time.perf_counter(), time.process_time(), cpu_seconds(backend)
            for i in range(0, len(rows), BATCH):
                with (
                    conn.transaction(),
                    conn.cursor() as cur,
                    cur.copy(
                        f"COPY bench_copy_usage ({columns}) FROM STDIN (FORMAT BINARY)"
                    ) as copy,
                ):
                    copy.set_types(types)
                    for values in itertools.islice(rows, i, i + BATCH):
                        copy.write_row(values)
            runs.append(
                Copied(
                    time.perf_counter() - began,
                    len(rows),
                    time.process_time() - client,
                    cpu_seconds(backend) - server,
                )
            )
        copied = conn.execute("SELECT count(*) FROM bench_copy_usage").fetchone()[0]
        conn.execute("DROP TABLE bench_copy_usage")
    if copied != len(rows):
        raise BenchError(f"COPY wrote {copied} rows of {len(rows)}")
    return min(runs, key=lambda run: run.seconds)


def import_file(url: str, path: Path, *, unusable: int):
    """Runs import_usage on an SWF file; its only rejects must be the unusable lines."""
    measured = run_measured(
        [
            sys.executable,
            "manage.py",
            "import_usage",
            "--cluster",
            CLUSTER,
            "--format",
            "swf",
            "-v",
            "0",
            str(path),
        ],
        env=portal_env(url),
    )
    rejected = f"Rejected {unusable:,} line" if unusable else "Rejected 0 lines"
    if rejected not in measured.stdout or measured.returncode != (1 if unusable else 0):
        raise BenchError(
            f"import_usage {path.name} exited {measured.returncode}, expected {unusable} "
            f"rejected lines:\n{measured.stdout}\n{measured.stderr[-3000:]}"
        )
    return measured


def run(
    *,
    jobs: int | None = None,
    database_url: str = DEFAULT_URL,
    trace: Path = TRACE,
    memory: bool = True,
    log=print,
) -> dict:
    """Runs the whole benchmark; returns its figures ("rows" is the table)."""
    if not Path(trace).exists():
        raise BenchError(f"no trace at {trace}")
    if not database_url.startswith(("postgres://", "postgresql://")):
        raise BenchError("the benchmark needs PostgreSQL (COPY is the reference)")
    began = time.perf_counter()
    recreate_database(database_url)
    use_database(database_url)
    from django.conf import settings

    # The services e-mail every request and approval of the site built here: nobody reads
    # them, and the console backend would bury the table.
    settings.EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
    migrate()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as work:
        figures = _measure(
            Path(work), jobs=jobs, database_url=database_url, trace=trace, memory=memory, log=log
        )
    figures["total_seconds"] = time.perf_counter() - began
    return figures


def _measure(work: Path, *, jobs, database_url, trace, memory, log) -> dict:
    one = work / "trace.swf"
    job_lines = write_trace(Path(trace), one, jobs=jobs)
    log(f"database {database_name(database_url)}; {job_lines:,} job lines of {Path(trace).name}")
    site = build_site(one)
    cluster = site["cluster"]
    bodies, records, unusable = usage_batches(one, cluster)
    log(f"{records:,} usage records in {len(bodies)} batches ({unusable} job lines unusable)")

    with gunicorn(database_url) as server:
        first = post_all(server, site["token"], bodies, database_url)
        log(f"posted in {first.seconds:.1f} s: {dict(first.answers)}")
        replay = post_all(server, site["token"], bodies, database_url)
        log(f"replayed in {replay.seconds:.1f} s: {dict(replay.answers)}")
    created = first.answers
    if created["created"] != records or created["duplicates"] or created["corrected"]:
        raise BenchError(f"the first posting should create {records} records: {dict(created)}")
    again = replay.answers
    if (again["duplicates"], again["created"], again["corrected"]) != (records, 0, 0):
        raise BenchError(f"the replay must be all duplicates: {dict(again)}")
    if again["su_charged"] != 0:
        raise BenchError(f"the replay charged {again['su_charged']} SU")

    copied = copy_reference(database_url)
    log(f"COPY of {copied.rows:,} rows in {copied.seconds:.2f} s")
    into_usage = copy_reference(database_url, like_usage=True)
    log(f"COPY into a table like the usage table: {into_usage.seconds:.2f} s")

    rate = records / first.seconds
    copy_rate = copied.rows / copied.seconds
    replay_rate = records / replay.seconds
    # Records per CPU-second, wherever the CPU was spent: steadier than wall-clock rates
    # on a machine others share, and the work each path really costs.
    cpu_rate = records / (first.portal_cpu + first.database_cpu)
    replay_cpu_rate = records / (replay.portal_cpu + replay.database_cpu)
    copy_cpu_rate = copied.rows / (copied.client_cpu + copied.database_cpu)
    usage_copy_rate = into_usage.rows / into_usage.seconds
    rows = [
        row("HTTP ingest, new jobs", rate, "records/s", copy_rate, "raw COPY"),
        row(
            "HTTP ingest, new jobs, against a COPY into the usage table's like",
            rate,
            "records/s",
            usage_copy_rate,
            "raw COPY into a table with the usage table's indexes, checks and keys",
        ),
        row("HTTP replay, all duplicates", replay_rate, "records/s", rate, "HTTP ingest"),
        row("raw binary COPY into a bare logged table (best of 3)", copy_rate, "records/s"),
        row(
            "HTTP ingest per CPU-second (portal + PostgreSQL)",
            cpu_rate,
            "records",
            copy_cpu_rate,
            "raw COPY (client + PostgreSQL)",
        ),
        row(
            "HTTP replay per CPU-second (portal + PostgreSQL)",
            replay_cpu_rate,
            "records",
            cpu_rate,
            "HTTP ingest",
        ),
    ]
    figures = {
        "benchmark": "ingest",
        "machine": machine(),
        "trace": Path(trace).name,
        "job_lines": job_lines,
        "unusable_job_lines": unusable,
        "records": records,
        "batches": len(bodies),
        "batch_size": BATCH,
        "site": {k: v for k, v in site.items() if k not in ("cluster", "token")},
        "su_charged": str(created["su_charged"]),
        "ingest_seconds": first.seconds,
        "ingest_records_per_s": rate,
        "ingest_connections": first.connections,
        "ingest_portal_cpu_s": first.portal_cpu,
        "ingest_database_cpu_s": first.database_cpu,
        "replay_seconds": replay.seconds,
        "replay_records_per_s": replay_rate,
        "replay_connections": replay.connections,
        "replay_portal_cpu_s": replay.portal_cpu,
        "replay_database_cpu_s": replay.database_cpu,
        "copy_seconds": copied.seconds,
        "copy_records_per_s": copy_rate,
        "copy_client_cpu_s": copied.client_cpu,
        "copy_database_cpu_s": copied.database_cpu,
        "ratio_to_copy": rate / copy_rate,
        "copy_like_usage_seconds": into_usage.seconds,
        "copy_like_usage_records_per_s": usage_copy_rate,
        "ratio_to_copy_like_usage": rate / usage_copy_rate,
        "cpu_ratio_to_copy": cpu_rate / copy_cpu_rate,
    }

    if memory:
        many = work / f"trace-x{COPIES}.swf"
        write_trace(Path(trace), many, jobs=jobs, copies=COPIES)
        single = import_file(database_url, one, unusable=unusable)
        log(f"import_usage x1: {single.seconds:.1f} s, peak RSS {single.peak_rss_kib:,} KiB")
        multiple = import_file(database_url, many, unusable=unusable * COPIES)
        log(f"import_usage x{COPIES}: {multiple.seconds:.1f} s, peak {multiple.peak_rss_kib:,} KiB")
        mib = 1024
        rows += [
            row("import_usage peak RSS, trace x1", single.peak_rss_kib / mib, "MiB"),
            row(
                f"import_usage peak RSS, trace x{COPIES}",
                multiple.peak_rss_kib / mib,
                "MiB",
                single.peak_rss_kib / mib,
                "trace x1",
            ),
        ]
        figures.update(
            import_x1_seconds=single.seconds,
            import_x1_peak_rss_kib=single.peak_rss_kib,
            import_xn_copies=COPIES,
            import_xn_seconds=multiple.seconds,
            import_xn_peak_rss_kib=multiple.peak_rss_kib,
            memory_ratio=multiple.peak_rss_kib / single.peak_rss_kib,
        )

    from allocations.ledger import ledger_drift

    drift = ledger_drift()
    if drift:
        raise BenchError("the ledger drifted:\n" + "\n".join(map(str, drift[:20])))
    figures["ledger_drift"] = 0
    figures["rows"] = rows
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, help="Only the trace's first N job lines.")
    parser.add_argument(
        "--database-url",
        default=DEFAULT_URL,
        help=f"The database to drop and create (default {DEFAULT_URL}).",
    )
    parser.add_argument("--trace", type=Path, default=TRACE, help="An SWF trace (gzip or not).")
    parser.add_argument("--no-memory", action="store_true", help="Skip the import_usage runs.")
    args = parser.parse_args(argv)
    try:
        figures = run(
            jobs=args.jobs,
            database_url=args.database_url,
            trace=args.trace,
            memory=not args.no_memory,
            log=lambda text: print(text, file=sys.stderr, flush=True),
        )
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(markdown_table(figures["rows"]))
    print(
        f"\n{figures['machine']}; {figures['records']:,} records; results in "
        f"{write_results('ingest', figures).relative_to(REPO)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
