#!/usr/bin/env python3
"""su_importer: posts finished Slurm jobs from sacct to the allocation portal.

Python standard library only (3.8+): copy it and su_common.py (what it shares with su_sync.py)
to the Slurm host and run it from cron or a systemd timer.

    su_importer.py --portal https://portal.example.edu --cluster gpu1 \\
        --token-file /etc/su-importer/token --state-file /var/lib/su-importer/state.json \\
        --resource-map 'cpu=CPU,gres/gpu:h200=GPU H200'

Each run asks sacct for the jobs that ended between the high-water mark (from the state file,
minus --overlap) and --until, turns their AllocTRES into usage of portal resources
(raw_unit_seconds = TRES value x ElapsedRaw), posts them in batches to POST /api/v1/usage/ and,
once every batch is accepted, stores --until as the new high-water mark. Jobs sent twice (the
overlap) come back as duplicates and are charged nothing.

Exit status: 0 done; 1 a local problem (token or state file, sacct, options, a portal answer
that is not understood); 2 some jobs were not charged (a rejected batch or a job that could not
be read or mapped; the high-water mark is not advanced, fix and run again); 3 the token was
refused (401/403); 4 the portal could not be reached after the retries.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from su_common import (
    EXIT_OK,
    EXIT_REJECTED,
    Failure,
    add_portal_options,
    check_portal_options,
    detail,
    log,
    portal_url,
    read_token,
    refused_token,
    request_json,
)

# The columns the portal's sacct parser reads (allocations/parsers/sacct.py SACCT_FORMAT).
SACCT_FORMAT = "JobIDRaw,JobID,Cluster,User,Account,Partition,AllocTRES,ElapsedRaw,Start,End,State"
SACCT_STATES = "CD,F,TO,CA,NF,PR,OOM"
NOT_ENDED_STATES = {"PENDING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}
NO_TIME = {"", "Unknown", "None"}
GPU = "gres/gpu"
# Slurm sizes are 1024-based; a bare number is megabytes.
SIZE_MB = {
    "": Decimal(1),
    "K": Decimal(1) / 1024,
    "M": Decimal(1),
    "G": Decimal(1024),
    "T": Decimal(1024) ** 2,
    "P": Decimal(1024) ** 3,
}
SIZE_TRES = {"mem", "vmem", "fs/disk"}
RAW_QUANTUM = Decimal("0.001")
UTC = timezone.utc  # noqa: UP017 (datetime.UTC is 3.11+; Slurm hosts may run older Pythons)
USAGE_PATH = "/api/v1/usage/"
AGENT = "su-importer"


# ---------------------------------------------------------------------------------- times


def parse_time(text: str, option: str) -> datetime:
    """`now`, or ISO 8601 (`2026-01-01T00:00:00Z`, an offset, or no zone meaning UTC)."""
    if text == "now":
        return datetime.now(UTC).replace(microsecond=0)
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Failure(
            f"{option} {text!r} is not an ISO 8601 time such as 2026-01-01T00:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).replace(microsecond=0)


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sacct_time(when: datetime) -> str:
    # sacct reads times in TZ, which the importer sets to UTC.
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


# ---------------------------------------------------------------------------------- state


def read_state(path: str, since: datetime | None) -> datetime:
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except FileNotFoundError:
        if since is None:
            raise Failure(
                f"state file {path} does not exist: give --since for the first run "
                "(e.g. --since 2026-01-01T00:00:00Z)"
            ) from None
        return since
    except (OSError, ValueError) as exc:
        raise Failure(f"cannot read state file {path}: {exc}") from None
    mark = state.get("high_water_mark") if isinstance(state, dict) else None
    if not isinstance(mark, str):
        raise Failure(f"state file {path} has no high_water_mark")
    return parse_time(mark, f"high_water_mark in {path}")


def write_state(path: str, mark: datetime, cluster: str) -> None:
    """Replaces the state file atomically: a crash leaves the old mark or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    body = {"cluster": cluster, "high_water_mark": iso(mark), "updated_at": iso(datetime.now(UTC))}
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".su-importer-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(body, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


# ---------------------------------------------------------------------------------- sacct


def sacct_command(sacct: str, start: datetime, end: datetime) -> list[str]:
    return [
        sacct,
        "--allusers",
        "--parsable2",
        "--starttime",
        sacct_time(start),
        "--endtime",
        sacct_time(end),
        f"--state={SACCT_STATES}",
        f"--format={SACCT_FORMAT}",
    ]


def run_sacct(command: list[str], timeout: float) -> str:
    env = dict(os.environ, TZ="UTC", SLURM_TIME_FORMAT="standard")
    try:
        done = subprocess.run(  # noqa: S603 (a fixed argument list, no shell)
            command, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except FileNotFoundError:
        message = f"{command[0]} not found: is Slurm installed and on PATH? (or give --sacct)"
        raise Failure(message) from None
    except PermissionError:
        raise Failure(f"{command[0]} is not executable") from None
    except subprocess.TimeoutExpired:
        raise Failure(f"sacct did not finish within {timeout:g} s (--sacct-timeout)") from None
    if done.returncode != 0:
        stderr = done.stderr.strip() or "(no output on stderr)"
        raise Failure(f"sacct failed with exit status {done.returncode}: {stderr}")
    return done.stdout


class Job:
    __slots__ = ("account", "elapsed", "end", "job_id", "line", "start", "tres", "user")

    def __init__(self, line, job_id, user, account, tres, elapsed, start, end):
        self.line, self.job_id, self.user, self.account = line, job_id, user, account
        self.tres, self.elapsed, self.start, self.end = tres, elapsed, start, end


class Problem:
    """A line that is not charged this run and keeps the high-water mark where it is."""

    __slots__ = ("job_id", "line", "reason")

    def __init__(self, line: int, job_id: str, reason: str):
        self.line, self.job_id, self.reason = line, job_id, reason

    def __str__(self) -> str:
        job = f"job {self.job_id}: " if self.job_id else ""
        return f"line {self.line}: {job}{self.reason}"


def parse_tres(text: str) -> dict[str, Decimal]:
    """`cpu=4,mem=16G,gres/gpu:h200=2` -> {"cpu": 4, "mem": 16384, "gres/gpu:h200": 2}."""
    tres: dict[str, Decimal] = {}
    for entry in text.split(","):
        if not entry:
            continue
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise ValueError(f"TRES entry {entry!r} is not name=value")
        suffix = value[-1] if value and value[-1] in "KMGTP" else ""
        try:
            number = Decimal(value[: len(value) - len(suffix)])
        except InvalidOperation:
            raise ValueError(f"TRES {name}={value!r} is not a number") from None
        if not number.is_finite() or number < 0:
            raise ValueError(f"TRES {name}={value!r} is not a non-negative number")
        if suffix and not (name in SIZE_TRES or name.startswith("bb/")):
            raise ValueError(f"TRES {name}={value!r}: a count takes no unit suffix")
        tres[name] = number * SIZE_MB[suffix] if suffix else number
    return tres


def parse_sacct_time(text: str, column: str) -> datetime | None:
    if text in NO_TIME:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{column} {text!r} is not YYYY-MM-DDTHH:MM:SS") from None


def parse_sacct(text: str) -> tuple[list[Job], list[Problem], dict[str, int]]:
    """The finished jobs in `sacct --parsable2` output (with its header), the lines that could
    not be read, and counts of lines deliberately skipped by reason."""
    header: list[str] | None = None
    latest: dict[str, Job] = {}
    problems: list[Problem] = []
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for number, raw_line in enumerate(text.splitlines(), start=1):
        if not raw_line.strip():
            continue
        fields = raw_line.split("|")
        if header is None:
            header = [name.strip().lower() for name in fields]
            missing = [c for c in SACCT_FORMAT.split(",") if c.lower() not in header]
            missing = [c for c in missing if c != "Cluster"]
            if missing:
                raise Failure(
                    f"sacct output line {number} is not a header with {', '.join(missing)}: "
                    f"run sacct --parsable2 --format={SACCT_FORMAT} (without --noheader)"
                )
            continue
        if len(fields) != len(header):
            problems.append(
                Problem(number, "", f"{len(fields)} fields, the header has {len(header)}")
            )
            continue
        # Lengths are checked above; zip(strict=) needs Python 3.10.
        row = dict(zip(header, fields))  # noqa: B905
        job_id = row["jobidraw"]
        if "." in job_id or "." in row["jobid"]:
            skip("step")
            continue
        state = (row["state"].split() or [""])[0]
        try:
            end = parse_sacct_time(row["end"], "End")
            if end is None or state in NOT_ENDED_STATES:
                skip("not ended")
                continue
            if not row["alloctres"]:
                skip("never ran")
                continue
            if not job_id:
                raise ValueError("JobIDRaw is empty")
            if not row["user"]:
                raise ValueError("the job's allocation line has no User")
            if not row["account"]:
                raise ValueError("the job has no Account")
            if not row["elapsedraw"].isdigit():
                raise ValueError(f"ElapsedRaw {row['elapsedraw']!r} is not whole seconds")
            start = parse_sacct_time(row["start"], "Start")
            if start is None:
                raise ValueError(f"the job ended but has no Start ({row['start']!r})")
            job = Job(
                number,
                job_id,
                row["user"],
                row["account"],
                parse_tres(row["alloctres"]),
                int(row["elapsedraw"]),
                start,
                end,
            )
        except ValueError as exc:
            problems.append(Problem(number, job_id, str(exc)))
            continue
        # `sacct -D` lists every run of a requeued job; the portal charges the last one.
        earlier = latest.get(job_id)
        if earlier is not None:
            skip("earlier run")
            if earlier.end > job.end:
                continue
        latest[job_id] = job
    if header is None:
        raise Failure(f"sacct printed nothing, not even its header (--format={SACCT_FORMAT})")
    return sorted(latest.values(), key=lambda j: j.line), problems, skipped


# -------------------------------------------------------------------------------- mapping


def parse_resource_map(text: str) -> dict[str, str]:
    """`cpu=CPU,gres/gpu:h200=GPU H200` -> {"cpu": "CPU", "gres/gpu:h200": "GPU H200"}."""
    mapping: dict[str, str] = {}
    for entry in text.split(","):
        tres, sep, resource = (part.strip() for part in entry.partition("="))
        if not sep or not tres or not resource:
            raise Failure(f"--resource-map entry {entry!r} is not TRES=resource (cpu=CPU)")
        mapping[tres] = resource
    return mapping


def tres_entries(tres: dict[str, Decimal]) -> list[tuple[str, Decimal]]:
    """The job's TRES with GPUs counted once: typed `gres/gpu:<type>` entries win, and the
    untyped `gres/gpu` total only counts GPUs no typed entry accounts for."""
    prefix = GPU + ":"
    entries = [(n, v) for n, v in tres.items() if n != GPU and not n.startswith(prefix)]
    typed = [(n, v) for n, v in tres.items() if n.startswith(prefix)]
    entries.extend(typed)
    untyped = tres.get(GPU, Decimal(0)) - sum((v for _, v in typed), Decimal(0))
    if untyped > 0:
        entries.append((GPU, untyped))
    return entries


def job_records(job: Job, resource_map: dict[str, str]) -> list[dict]:
    totals: dict[str, Decimal] = {}
    for name, value in tres_entries(job.tres):
        resource = resource_map.get(name)
        if resource is None or not value:
            continue
        totals[resource] = totals.get(resource, Decimal(0)) + value * job.elapsed
    if not totals:
        names = ", ".join(sorted(job.tres)) or "none"
        raise ValueError(f"no TRES of the job ({names}) is in --resource-map")
    return [
        {
            "job_id": job.job_id,
            "user": job.user,
            "allocation": job.account,
            "resource": resource,
            "raw_unit_seconds": str(total.quantize(RAW_QUANTUM, rounding=ROUND_HALF_EVEN)),
            "start": iso(job.start),
            "end": iso(job.end),
        }
        for resource, total in totals.items()
    ]


# ----------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Post finished Slurm jobs (sacct) to the allocation portal.",
        epilog="Exit status: 0 done, 1 error, 2 jobs not charged (mark kept), "
        "3 token refused, 4 portal unreachable.",
    )
    add_portal_options(parser)
    parser.add_argument("--state-file", required=True, help="JSON file with the high-water mark")
    parser.add_argument("--overlap", type=int, default=3600, help="seconds (default 3600)")
    parser.add_argument("--batch-size", type=int, default=5000, help="records (default 5000)")
    parser.add_argument("--since", help="start of the first run (no state file yet), ISO 8601")
    parser.add_argument("--until", default="now", help="end of the window (default now)")
    parser.add_argument("--dry-run", action="store_true", help="parse and map, post nothing")
    parser.add_argument(
        "--resource-map",
        default="cpu=CPU",
        help="TRES=portal resource, comma separated (default cpu=CPU), "
        "e.g. 'cpu=CPU,gres/gpu:h200=GPU H200'",
    )
    parser.add_argument("--sacct", default="sacct", help="the sacct command (default: on PATH)")
    parser.add_argument("--sacct-timeout", type=float, default=600, help="seconds (default 600)")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.batch_size > 10000:
        raise Failure("--batch-size must be between 1 and 10000")
    if args.overlap < 0:
        raise Failure("--overlap must not be negative")
    check_portal_options(args)
    resource_map = parse_resource_map(args.resource_map)
    since = parse_time(args.since, "--since") if args.since else None
    until = parse_time(args.until, "--until")
    token = None if args.dry_run else read_token(args.token_file)
    mark = read_state(args.state_file, since)
    start = mark - timedelta(seconds=args.overlap)
    if start >= until:
        raise Failure(f"the window {iso(start)} to {iso(until)} is empty: check --until")

    jobs, problems, skipped = parse_sacct(
        run_sacct(sacct_command(args.sacct, start, until), args.sacct_timeout)
    )
    records: list[dict] = []
    origins: list[tuple[int, str]] = []  # the sacct line and job id of each record
    for job in jobs:
        try:
            mapped = job_records(job, resource_map)
        except ValueError as exc:
            problems.append(Problem(job.line, job.job_id, str(exc)))
            continue
        records.extend(mapped)
        origins.extend((job.line, job.job_id) for _ in mapped)
    problems.sort(key=lambda p: p.line)
    for problem in problems:
        log(f"not charged: {problem}")
    skips = ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items()))
    print(
        f"{args.cluster}: sacct {iso(start)} to {iso(until)}: {len(jobs)} jobs, "
        f"{len(records)} records" + (f"; skipped lines: {skips}" if skips else "")
    )

    if args.dry_run:
        for record in records:
            print(json.dumps(record))
        print("dry run: nothing posted, the high-water mark is unchanged")
        return EXIT_REJECTED if problems else EXIT_OK

    url = portal_url(args, USAGE_PATH)
    totals = {"created": 0, "duplicates": 0, "corrected": 0}
    su = Decimal(0)
    rejected = 0
    batches = [
        (i, records[i : i + args.batch_size]) for i in range(0, len(records), args.batch_size)
    ]
    for number, (offset, batch) in enumerate(batches, start=1):
        body = {"cluster": args.cluster, "records": batch}
        status, answer = request_json("POST", url, token, body, args, AGENT)
        where = f"batch {number} of {len(batches)}"
        if status in (401, 403):
            raise refused_token(status, answer, args)
        if status == 400 and isinstance(answer, dict) and isinstance(answer.get("errors"), list):
            rejected += len(batch)
            log(f"{where} rejected, nothing of it was charged: {detail(answer)}")
            for error in answer["errors"]:
                index = error.get("index") if isinstance(error, dict) else None
                if isinstance(index, int) and 0 <= index < len(batch):
                    line, job_id = origins[offset + index]
                    log(f"line {line}: job {job_id}: {error.get('field')}: {error.get('message')}")
                else:
                    log(f"{error}")
            continue
        if status != 200 or not isinstance(answer, dict):
            raise Failure(f"{where}: the portal answered HTTP {status}: {detail(answer)}")
        for key in totals:
            totals[key] += int(answer.get(key, 0))
        su += Decimal(str(answer.get("su_charged", "0")))

    print(
        f"created {totals['created']}, duplicates {totals['duplicates']}, "
        f"corrected {totals['corrected']}, {su} SUs charged"
    )
    if rejected or problems:
        log(
            f"{rejected} records rejected, {len(problems)} lines not charged: the high-water "
            f"mark stays at {iso(mark)}; fix the cause and run again (charged jobs come back "
            "as duplicates)"
        )
        return EXIT_REJECTED
    write_state(args.state_file, until, args.cluster)
    print(f"high-water mark now {iso(until)}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except Failure as exc:
        log(f"su_importer: error: {exc}")
        return exc.code
    except KeyboardInterrupt:
        log("su_importer: interrupted; the high-water mark is unchanged")
        return 130


if __name__ == "__main__":
    sys.exit(main())
