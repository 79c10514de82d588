"""Every performance figure of the portal, each beside its reference, measured in one run.

    bench/run [--quick] [--rows N] [--small-rows N] [--seconds S] [--database-url URL]

1. Usage ingestion: bench/ingest.py's run() (the HTTP API against a raw COPY of the same
   rows), on the whole LANL trace (--quick: its first 2,000 jobs).
2. A site at scale, in a PostgreSQL database of its own: 200 allocations (20 PIs, 10
   each), 2,000 members and pending requests, built through the services; people and
   jobs from the LANL and NASA traces, replicated with shifted job ids and times.
   Usage rows are loaded in SQL consistent with the ledger: the rows, the maintained
   su_used of allocations and memberships in one set-based UPDATE each, the daily
   rollups rebuilt in one grouped INSERT; then ledger_drift() and rollups_drift() must be
   empty, or the run fails.
3. Reads, served by gunicorn as in production and driven by wrk on 127.0.0.1: each
   endpoint or page right after its trivial reference (GET /api/v1/ping/ for the API,
   /ping/ for pages), in three alternating rounds of --seconds each, p50 and p99 of the
   round with the median ratio, at --small-rows and again after growing the same site
   to --rows (vacuumed and analysed, as a table that size in production would be);
   queries per request counted in this process at both scales.
It prints one markdown table (figure, value, reference, ratio, goal, met?) and writes
the figures as JSON to bench/results/.
"""

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import ingest
from bench.common import (
    DEFAULT_SERVER,
    REPO,
    BenchError,
    gunicorn,
    machine,
    migrate,
    psycopg_url,
    recreate_database,
    use_database,
    write_results,
)

DATA = REPO.parent / "shared" / "data"
# The whole traces beside the checkout when they are there; otherwise the slice of the LANL
# trace the demo ships, so a clone alone runs the suite (with fewer distinct users).
TRACES = (
    {
        "lanl": DATA / "LANL-CM5-1994-4.1-cln.swf.gz",
        "nasa": DATA / "NASA-iPSC-1993-3.1-cln.swf.gz",
    }
    if (DATA / "LANL-CM5-1994-4.1-cln.swf.gz").exists()
    else {"lanl": REPO / "allocations" / "demo" / "lanl-cm5-slice.swf.gz"}
)
DEFAULT_URL = f"{DEFAULT_SERVER}/su_bench_run"
INGEST_URL = f"{DEFAULT_SERVER}/su_bench_run_ingest"
CLUSTER = "bench"
PIS, ALLOCATIONS_PER_PI, MEMBERS_PER_ALLOCATION = 20, 10, 10
PENDING = 40
# --quick: a tenth of the site (20 allocations, 200 members).
QUICK_PIS = 2
# Usage falls in the year before TODAY; allocations run from START to END around it.
TODAY = dt.date(2026, 11, 24)
START, END = dt.date(2025, 10, 1), dt.date(2027, 9, 30)
WINDOW_DAYS = 365
SU_PER_CORE_HOUR = "0.01"
WRK_SCRIPT = REPO / "bench" / "wrk.lua"
# Each read and its reference are measured in this many alternating rounds; the round
# with the median ratio counts. (--quick: one, as a smoke test.)
ROUNDS = 3


def trace_jobs(*, limit_per_trace: int | None = None) -> list[tuple]:
    """(source, user, cores, seconds, offset) of every usable job of both traces, with
    the project's SWF parser: offset is seconds since the trace's first job started."""
    from allocations.parsers import JobRecord, open_text, parse_swf

    jobs = []
    for source, path in TRACES.items():
        first = None
        count = 0
        with open_text(path) as lines:
            for item in parse_swf(lines):
                if not isinstance(item, JobRecord) or item.elapsed_seconds <= 0:
                    continue
                cores = item.tres.get("cpu")
                if not cores:
                    continue
                first = first or item.start
                offset = int((item.start - first).total_seconds())
                jobs.append((source, item.user, int(cores), item.elapsed_seconds, offset))
                count += 1
                if limit_per_trace and count >= limit_per_trace:
                    break
    return jobs


def build_site(jobs: list[tuple], *, pis: int = PIS) -> dict:
    """A cluster, a rate, `pis` PIs with 10 allocations each, 10 members per allocation
    (the traces' users, replicated), pending requests and an importer token: all through
    the services."""
    from accounts.services import organization_create, user_create
    from accounts.tokens import api_token_issue
    from allocations import services
    from allocations.models import Cluster, Resource

    people = sorted({f"{source}-u{user}" for source, user, *_ in jobs})
    org = organization_create(name="Shared Computing Facility")
    admin = user_create(username="bench-admin", email="admin@example.org", organization=org)
    cluster = Cluster.objects.create(name=CLUSTER, title="Benchmark cluster")
    cluster.admins.add(admin)
    cpu = Resource.objects.create(
        cluster=cluster, name="CPU", kind="CPU", unit="core", amount=65536
    )
    services.rate_add(
        actor=admin,
        resource=cpu,
        su_per_unit_hour=SU_PER_CORE_HOUR,
        start=dt.datetime.combine(START, dt.time(), tzinfo=dt.UTC),
    )
    members_needed = pis * ALLOCATIONS_PER_PI * MEMBERS_PER_ALLOCATION
    # Each trace user stands for a few people (a suffix per copy), so 2,000 members are
    # 2,000 distinct users whatever the traces hold.
    users = []
    copy = 0
    while len(users) < members_needed:
        for name in people:
            if len(users) == members_needed:
                break
            username = name if copy == 0 else f"{name}-{copy}"
            users.append(
                user_create(username=username, email=f"{username}@example.org", organization=org)
            )
        copy += 1
    allocations = []
    leaders = []
    for p in range(pis):
        pi = user_create(username=f"pi{p:02}", email=f"pi{p:02}@example.org", organization=org)
        leaders.append(pi)
        project = services.project_create(actor=pi, title=f"Project {p:02}", pi=pi)
        for a in range(ALLOCATIONS_PER_PI):
            request = services.allocation_request_create(
                actor=pi,
                project=project,
                cluster=cluster,
                name=f"p{p:02}-a{a}",
                resources=[cpu],
                su_amount="100000000",
                start=START,
                end=END,
                justification="Benchmark allocation",
            )
            services.change_request_approve(actor=admin, request=request)
            allocations.append(request.allocation)
    for i, allocation in enumerate(allocations):
        pi = leaders[i // ALLOCATIONS_PER_PI]
        for j in range(MEMBERS_PER_ALLOCATION):
            user = users[i * MEMBERS_PER_ALLOCATION + j]
            services.membership_add(actor=pi, allocation=allocation, user=user)
    pending = min(PENDING, len(allocations))
    for i in range(pending):
        allocation = allocations[i * len(allocations) // pending]
        services.change_request_submit(
            actor=allocation.project.pi,
            allocation=allocation,
            su_delta="1000",
            justification="More jobs than planned",
        )
    token = api_token_issue(actor=admin, cluster=cluster, name="bench importer")
    return {
        "token": token.secret,
        "admin": admin.username,
        "pi": leaders[0].username,
        "member": users[0].username,
        "allocation": allocations[0].code,
        "account": allocations[0].name,
        "users": len(users) + len(leaders) + 1,
        "allocations": len(allocations),
        "memberships": len(allocations) * MEMBERS_PER_ALLOCATION,
        "pending_requests": pending,
    }


def load_trace_jobs(conn, jobs: list[tuple]) -> None:
    """The traces' jobs, numbered, in a table the usage INSERT replicates from."""
    conn.execute("DROP TABLE IF EXISTS bench_trace_job")
    conn.execute(
        "CREATE TABLE bench_trace_job (n integer PRIMARY KEY, source text, username text, "
        "cores integer, seconds integer, frac double precision)"
    )
    span = {}
    for source, _, _, _, offset in jobs:
        span[source] = max(span.get(source, 1), offset + 1)
    with conn.cursor().copy(
        "COPY bench_trace_job (n, source, username, cores, seconds, frac) FROM STDIN"
    ) as copy:
        for n, (source, user, cores, seconds, offset) in enumerate(jobs):
            # frac: when the job started, as a fraction of its trace's span.
            copy.write_row((n, source, f"{source}-u{user}", cores, seconds, offset / span[source]))
    conn.execute("ANALYZE bench_trace_job")


def add_usage(conn, *, first: int, rows: int) -> None:
    """Usage rows number first .. rows-1, as the traces' jobs replicated: copy k of job j
    is job id "k-j", charged to the member the trace's user stands for in copy k (an
    existing membership, so every total has its records), its times shifted by k days
    and spread over the year before TODAY; 0.01 SU a core-hour, as the rate says. Then
    the totals the ledger keeps and the daily rollups, set-based."""
    sql = """
    WITH member AS (
        SELECT row_number() OVER (ORDER BY m.id) - 1 AS i, m.allocation_id, m.user_id
        FROM allocations_membership m
    ), counts AS (
        SELECT (SELECT count(*) FROM bench_trace_job) AS jobs,
               (SELECT count(*) FROM member) AS members
    ), job AS (
        SELECT g AS i, g / c.jobs AS k, t.*
        FROM counts c CROSS JOIN generate_series(%(first)s::bigint, %(last)s::bigint) g
        JOIN bench_trace_job t ON t.n = g %% c.jobs
    ), placed AS (
        SELECT job.*, mem.allocation_id, mem.user_id,
               %(window_end)s::timestamptz
                 - make_interval(secs => (1 - job.frac) * %(window)s * 86400)
                 + make_interval(days => (job.k %% 30)::int)
                 - interval '30 days' AS started
        FROM job CROSS JOIN counts c
        JOIN member mem ON mem.i = (abs(hashtext(job.username)) + job.k * 7) %% c.members
    )
    INSERT INTO allocations_usage (cluster_id, allocation_id, user_id, job_id, resource_id,
        raw_unit_seconds, rate_id, su_amount, charged_at, started_at, ended_at, recorded_at)
    SELECT %(cluster)s, allocation_id, user_id, k || '-' || n, %(resource)s,
           cores::numeric * seconds, %(rate)s,
           round(cores::numeric * seconds * %(su_per_hour)s / 3600, 4),
           started + make_interval(secs => seconds), started,
           started + make_interval(secs => seconds), now()
    FROM placed
    """
    cluster, resource, rate = conn.execute(
        "SELECT c.id, r.id, rt.id FROM allocations_cluster c "
        "JOIN allocations_resource r ON r.cluster_id = c.id "
        "JOIN allocations_rate rt ON rt.resource_id = r.id WHERE c.name = %s",
        [CLUSTER],
    ).fetchone()
    with conn.transaction():
        conn.execute(
            sql,
            {
                "first": first,
                "last": rows - 1,
                "window_end": dt.datetime.combine(TODAY, dt.time(), tzinfo=dt.UTC),
                "window": WINDOW_DAYS - 31,
                "cluster": cluster,
                "resource": resource,
                "rate": rate,
                "su_per_hour": SU_PER_CORE_HOUR,
            },
        )
        # The maintained totals: charges plus adjustments (there are none here).
        conn.execute(
            "UPDATE allocations_allocation a SET su_used = coalesce(s.total, 0) "
            "FROM (SELECT a2.id, sum(u.su_amount) AS total FROM allocations_allocation a2 "
            "LEFT JOIN allocations_usage u ON u.allocation_id = a2.id GROUP BY a2.id) s "
            "WHERE s.id = a.id"
        )
        conn.execute(
            "UPDATE allocations_membership m SET su_used = coalesce(s.total, 0) "
            "FROM (SELECT m2.id, sum(u.su_amount) AS total FROM allocations_membership m2 "
            "LEFT JOIN allocations_usage u "
            "ON u.allocation_id = m2.allocation_id AND u.user_id = m2.user_id "
            "GROUP BY m2.id) s WHERE s.id = m.id"
        )
        # What rollups.rollups_refresh_all writes, in one statement: no adjustments.
        conn.execute("DELETE FROM allocations_usagedaily")
        conn.execute(
            "INSERT INTO allocations_usagedaily "
            "(allocation_id, user_id, resource_id, day, su, raw, jobs) "
            "SELECT allocation_id, user_id, resource_id, (charged_at AT TIME ZONE 'UTC')::date, "
            "sum(su_amount), sum(raw_unit_seconds), count(*) FROM allocations_usage "
            "GROUP BY 1, 2, 3, 4"
        )
    # VACUUM as well: autovacuum would otherwise pick the fresh rows up in the middle of
    # the measurements, and until it has, the visibility map is empty and index-only
    # scans read the heap. A production table that size has been vacuumed long since.
    conn.execute("VACUUM ANALYZE")


def check_ledger() -> dict:
    from allocations.ledger import ledger_drift
    from allocations.rollups import rollups_drift

    drift = ledger_drift()
    if drift:
        raise BenchError("the ledger drifted:\n" + "\n".join(map(str, drift[:20])))
    rollup = rollups_drift()
    if rollup:
        raise BenchError("the rollups drifted:\n" + "\n".join(map(str, rollup[:20])))
    return {"ledger_drift": 0, "rollups_drift": 0}


def _credentials(site: dict) -> dict:
    """Who makes each request: the importer's token, or a session signed in through
    Django's own login (as a browser's would be)."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    sessions = {}
    for who in ("pi", "admin"):
        client = Client()
        client.force_login(get_user_model().objects.get(username=site[who]))
        cookie = settings.SESSION_COOKIE_NAME
        sessions[who] = f"{cookie}={client.cookies[cookie].value}"
    return {
        "token": {"BENCH_AUTHORIZATION": f"Bearer {site['token']}"},
        "pi": {"BENCH_COOKIE": sessions["pi"]},
        "admin": {"BENCH_COOKIE": sessions["admin"]},
    }


def targets(site: dict) -> list[dict]:
    """Each read the goals name, with the trivial request it is measured against (same
    caller, same kind: API or page) and its goal (p50 at most `goal` times the reference's)."""
    code = site["allocation"]
    admission = json.dumps(
        {
            "cluster": CLUSTER,
            "user": site["member"],
            "allocation": site["account"],
            "resource": "CPU",
            "estimate_su": "1",
        }
    )
    api_ping = "/api/v1/ping/"
    return [
        {"name": "admission (POST)", "path": "/api/v1/admission/", "body": admission,
         "who": "token", "reference": api_ping, "goal": 2},
        {"name": "balance (GET)", "path": f"/api/v1/allocations/{code}/balance/",
         "who": "token", "reference": api_ping, "goal": 2},
        {"name": "PI dashboard", "path": "/", "who": "pi", "reference": "/ping/", "goal": 2},
        {"name": "allocation page", "path": f"/allocations/{code}/", "who": "pi",
         "reference": "/ping/", "goal": 2},
        {"name": "admin review queue", "path": "/review/", "who": "admin",
         "reference": "/ping/", "goal": 2},
        {"name": "chart data: burn-down", "path": f"/api/v1/allocations/{code}/charts/burndown/",
         "who": "pi", "reference": api_ping, "goal": 3},
        {"name": "chart data: members", "path": f"/api/v1/allocations/{code}/charts/members/",
         "who": "pi", "reference": api_ping, "goal": 3},
    ]  # fmt: skip


def _check_answer(server, target: dict, path: str, body: str | None, env: dict) -> None:
    """One request first: it must succeed (a redirect to sign in would time nothing)."""
    headers = {}
    if "BENCH_COOKIE" in env:
        headers["Cookie"] = env["BENCH_COOKIE"]
    if "BENCH_AUTHORIZATION" in env:
        headers["Authorization"] = env["BENCH_AUTHORIZATION"]
    if body:
        headers["Content-Type"] = "application/json"
    conn = server.connection(timeout=120)
    try:
        conn.request("POST" if body else "GET", path, body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise BenchError(f"{target['name']}: {path} answered {response.status}: {answer[:500]!r}")


def wrk(server, path: str, *, body: str | None, env: dict, seconds: float) -> dict:
    argv = [
        "wrk",
        "--threads=1",
        # One connection: requests one after another, so p50 is each request's own latency.
        # With two, both landed on one of the two workers about half the time, and the
        # p50 of whichever run that was doubled.
        "--connections=1",
        f"--duration={max(1, round(seconds))}s",
        "--timeout=30s",
        "--latency",
        f"--script={WRK_SCRIPT}",
        f"http://{server.host}:{server.port}{path}",
    ]
    extra = {"BENCH_METHOD": "POST" if body else "GET", "BENCH_BODY": body or "", **env}
    done = subprocess.run(
        argv, env={**os.environ, **extra}, capture_output=True, text=True, check=False
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if done.returncode or line is None:
        raise BenchError(f"wrk {path} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    figures = json.loads(line.removeprefix("BENCH "))
    if figures["errors"] or figures["non_2xx_3xx"] or not figures["requests"]:
        raise BenchError(f"wrk {path}: failed requests: {figures}")
    return figures


def count_queries(site: dict, target: dict) -> int:
    """Queries one request makes, counted in this process with the same caller."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    headers = {}
    if target["who"] == "token":
        headers["Authorization"] = f"Bearer {site['token']}"
    else:
        client.force_login(get_user_model().objects.get(username=site[target["who"]]))
    with CaptureQueriesContext(connection) as ctx:
        if target.get("body"):
            response = client.post(
                target["path"], target["body"], content_type="application/json",
                headers=headers, secure=True,
            )  # fmt: skip
        else:
            response = client.get(target["path"], headers=headers, secure=True)
    if response.status_code != 200:
        raise BenchError(f"{target['path']} in process: {response.status_code}")
    return len(ctx.captured_queries)


def measure_reads(url: str, site: dict, *, seconds: float, rounds: int = ROUNDS, log) -> list[dict]:
    """Each target right after its reference, so both see the same machine, in
    alternating rounds."""
    credentials = _credentials(site)
    results = []
    env = {
        # The throttles would refuse a load generator after a few hundred requests.
        "THROTTLE_USER": "1000000/minute",
        "THROTTLE_IMPORTER": "1000000/minute",
    }
    with gunicorn(url, env=env) as server:
        for target in targets(site):
            creds = credentials[target["who"]]
            body = target.get("body")
            _check_answer(server, target, target["reference"], None, creds)
            _check_answer(server, target, target["path"], body, creds)
            # Alternating rounds: a burst of load from elsewhere on the machine lands on
            # one round of one of the pair, and the median of the rounds leaves it out.
            measured_rounds = []
            for _ in range(rounds):
                reference = wrk(server, target["reference"], body=None, env=creds, seconds=seconds)
                measured = wrk(server, target["path"], body=body, env=creds, seconds=seconds)
                ratio = measured["p50_us"] / reference["p50_us"]
                measured_rounds.append((ratio, reference, measured))
            measured_rounds.sort(key=lambda r: r[0])
            ratio, reference, measured = measured_rounds[len(measured_rounds) // 2]
            queries = count_queries(site, target)
            reference_queries = count_queries(
                site, {**target, "path": target["reference"], "body": None}
            )
            log(
                f"  {target['name']}: p50 {measured['p50_us'] / 1000:.1f} ms "
                f"(reference {reference['p50_us'] / 1000:.1f} ms), {queries} queries"
            )
            results.append(
                {
                    "name": target["name"],
                    "path": target["path"],
                    "reference_path": target["reference"],
                    "goal": target["goal"],
                    "measured": measured,
                    "reference": reference,
                    "queries": queries,
                    "reference_queries": reference_queries,
                    "ratio": ratio,
                    "round_ratios": [r[0] for r in measured_rounds],
                }
            )
    return results


def _ms(us: float) -> str:
    return f"{us / 1000:.1f} ms"


def _queries(n: int) -> str:
    return f"{n} query" if n == 1 else f"{n} queries"


def _rows_text(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}k"


def table_rows(ingested: dict, small: list[dict], large: list[dict], scales) -> list[dict]:
    """figure, value, reference, ratio, goal, met: one row per goal."""
    rows = []
    ratio = ingested["ratio_to_copy"]
    rows.append(
        {
            "figure": f"usage ingestion through the API ({ingested['records']:,} records)",
            "value": f"{ingested['ingest_records_per_s']:,.0f} records/s",
            "reference": f"raw COPY: {ingested['copy_records_per_s']:,.0f} records/s",
            "ratio": ratio,
            "goal": ">= 0.3",
            "met": ratio >= 0.3,
        }
    )
    # The most any code could reach against the goal's reference: PostgreSQL's own COPY
    # into a table that keeps the usage table's indexes, checks and foreign keys.
    bound = ingested["copy_like_usage_records_per_s"] / ingested["copy_records_per_s"]
    rows.append(
        {
            "figure": "raw COPY into a table like the usage table (indexes, checks, keys)",
            "value": f"{ingested['copy_like_usage_records_per_s']:,.0f} records/s",
            "reference": f"raw COPY: {ingested['copy_records_per_s']:,.0f} records/s",
            "ratio": bound,
            "goal": "(the bound on the row above)",
            "met": None,
        }
    )
    share = ingested["ratio_to_copy_like_usage"]
    rows.append(
        {
            "figure": "usage ingestion through the API, against that COPY",
            "value": f"{ingested['ingest_records_per_s']:,.0f} records/s",
            "reference": f"COPY into the usage table's like: "
            f"{ingested['copy_like_usage_records_per_s']:,.0f} records/s",
            "ratio": share,
            "goal": "(how much of the bound)",
            "met": None,
        }
    )
    cpu = ingested["cpu_ratio_to_copy"]
    portal_cpu = ingested["ingest_portal_cpu_s"] + ingested["ingest_database_cpu_s"]
    copy_cpu = ingested["copy_client_cpu_s"] + ingested["copy_database_cpu_s"]
    rows.append(
        {
            "figure": "usage ingestion, records per CPU-second (portal + PostgreSQL)",
            "value": f"{ingested['records'] / portal_cpu:,.0f}",
            "reference": f"raw COPY (client + PostgreSQL): {ingested['records'] / copy_cpu:,.0f}",
            "ratio": cpu,
            "goal": ">= 0.3",
            "met": cpu >= 0.3,
        }
    )
    small_rows, large_rows = scales
    for read in large:
        m, r = read["measured"], read["reference"]
        rows.append(
            {
                "figure": f"{read['name']} at {_rows_text(large_rows)} rows",
                "value": f"p50 {_ms(m['p50_us'])}, p99 {_ms(m['p99_us'])}, "
                f"{_queries(read['queries'])}",
                "reference": f"{read['reference_path']}: p50 {_ms(r['p50_us'])}, "
                f"p99 {_ms(r['p99_us'])}, {_queries(read['reference_queries'])}",
                "ratio": read["ratio"],
                "goal": f"p50 <= {read['goal']}x",
                "met": read["ratio"] <= read["goal"],
            }
        )
    by_name = {read["name"]: read for read in small}
    for read in large:
        before = by_name[read["name"]]
        quotient = read["ratio"] / before["ratio"]
        constant = read["queries"] == before["queries"]
        rows.append(
            {
                "figure": f"{read['name']}: {_rows_text(large_rows)} vs "
                f"{_rows_text(small_rows)} rows (p50 / reference p50; queries)",
                "value": f"{read['ratio']:.2f}x; {read['queries']} queries",
                "reference": f"{before['ratio']:.2f}x; {before['queries']} queries",
                "ratio": quotient,
                "goal": "about 1 (<= 1.5), same queries",
                "met": quotient <= 1.5 and constant,
            }
        )
    return rows


def _met(met: bool | None) -> str:
    return "—" if met is None else "yes" if met else "no"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| figure | value | reference | ratio | goal | met? |",
        "|---|---|---|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['figure']} | {r['value']} | {r['reference']} | {r['ratio']:.2f} "
            f"| {r['goal']} | {_met(r['met'])} |"
        )
    return "\n".join(lines)


def run(
    *,
    rows: int,
    small_rows: int,
    seconds: float,
    ingest_jobs: int | None,
    pis: int = PIS,
    rounds: int = ROUNDS,
    database_url: str = DEFAULT_URL,
    ingest_url: str = INGEST_URL,
    log=print,
) -> dict:
    import psycopg

    if shutil.which("wrk") is None:
        raise BenchError("wrk is missing: apt-get install wrk")
    if not 0 < small_rows < rows:
        raise BenchError("--small-rows must be above 0 and below --rows")
    began = time.perf_counter()
    timings = {}
    use_database(ingest_url)
    from django.conf import settings

    # The services e-mail every request and approval of the sites built here: nobody reads
    # them, and the console backend would bury the table.
    settings.EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
    logging.getLogger("allocations").setLevel(logging.WARNING)
    # Queries per request are counted with Django's test client, in this process.
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]

    log(f"1. ingestion: {'the whole LANL trace' if ingest_jobs is None else f'{ingest_jobs} jobs'}")
    # import_usage's memory on the trace and four times it takes minutes on the whole
    # trace (bench/ingest.py measures it); on a slice it keeps that path tested.
    ingested = ingest.run(
        jobs=ingest_jobs, database_url=ingest_url, memory=ingest_jobs is not None, log=log
    )
    timings["ingest_s"] = time.perf_counter() - began
    log(f"  {timings['ingest_s']:.0f} s")

    step = time.perf_counter()
    log(f"2. a site at scale in {database_url.rsplit('/', 1)[1]}")
    recreate_database(database_url)
    use_database(database_url)
    migrate()
    jobs = trace_jobs()
    site = build_site(jobs, pis=pis)
    timings["site_s"] = time.perf_counter() - step
    log(
        f"  {site['allocations']} allocations, {site['memberships']:,} members, by the "
        f"services in {timings['site_s']:.0f} s"
    )
    figures_of = {}
    with psycopg.connect(psycopg_url(database_url), autocommit=True) as conn:
        load_trace_jobs(conn, jobs)
        results = {}
        loaded = 0
        for scale in (small_rows, rows):
            t = time.perf_counter()
            add_usage(conn, first=loaded, rows=scale)
            loaded = scale
            count = conn.execute("SELECT count(*) FROM allocations_usage").fetchone()[0]
            if count != scale:
                raise BenchError(f"{count} usage rows, expected {scale}")
            timings[f"load_{scale}_s"] = time.perf_counter() - t
            t = time.perf_counter()
            figures_of[scale] = check_ledger()
            timings[f"drift_check_{scale}_s"] = time.perf_counter() - t
            log(
                f"  {scale:,} usage rows (loaded in {timings[f'load_{scale}_s']:.0f} s; "
                f"ledger and rollups checked in {timings[f'drift_check_{scale}_s']:.0f} s)"
            )
            log(f"3. reads at {scale:,} rows, {seconds:g} s each")
            t = time.perf_counter()
            results[scale] = measure_reads(
                database_url, site, seconds=seconds, rounds=rounds, log=log
            )
            timings[f"reads_{scale}_s"] = time.perf_counter() - t
        conn.execute("DROP TABLE bench_trace_job")
    timings["site_and_reads_s"] = time.perf_counter() - step
    table = table_rows(ingested, results[small_rows], results[rows], (small_rows, rows))
    return {
        "benchmark": "suite",
        "machine": machine(),
        "load_average": os.getloadavg(),
        "rows": rows,
        "small_rows": small_rows,
        "seconds_per_endpoint": seconds,
        "rounds": rounds,
        "site": {k: str(v) for k, v in site.items() if k != "token"},
        "trace_jobs": len(jobs),
        "ingest": {k: v for k, v in ingested.items() if k != "rows"},
        "reads": {str(scale): reads for scale, reads in results.items()},
        "checks": figures_of,
        "timings": timings,
        "total_seconds": time.perf_counter() - began,
        "table": table,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A small scale, about a minute.")
    parser.add_argument("--rows", type=int, help="Usage rows at full scale (default 1,000,000).")
    parser.add_argument(
        "--small-rows", type=int, help="Usage rows of the first scale (default rows / 10)."
    )
    parser.add_argument(
        "--seconds", type=float, help="wrk's duration per request and round (default 2)."
    )
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--ingest-database-url", default=INGEST_URL)
    args = parser.parse_args(argv)
    rows = args.rows or (20_000 if args.quick else 1_000_000)
    small_rows = args.small_rows or rows // 10
    seconds = args.seconds or (1 if args.quick else 2)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    try:
        figures = run(
            rows=rows,
            small_rows=small_rows,
            seconds=seconds,
            ingest_jobs=2000 if args.quick else None,
            pis=QUICK_PIS if args.quick else PIS,
            rounds=1 if args.quick else ROUNDS,
            database_url=args.database_url,
            ingest_url=args.ingest_database_url,
            log=log,
        )
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(markdown(figures["table"]))
    path = write_results("suite", figures)
    print(
        f"\n{figures['machine']}; load average {figures['load_average'][0]:.1f}; "
        f"{rows:,} usage rows; {figures['total_seconds']:.0f} s; results in "
        f"{path.relative_to(REPO)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
