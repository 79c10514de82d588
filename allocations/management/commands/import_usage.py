"""import_usage: charges a scheduler accounting file to a cluster's allocations.

The file is read line by line (parsers.open_text, gzip or not) and charged in batches as it
goes, so memory holds one batch, whatever the file's size. Two formats need more: sacct keeps
one small run per job until the end (a later line may hold a later run of a requeued job, see
parsers.sacct), and a slurmrestd response is one JSON document, read whole.
"""

import csv
import gzip
import io
import sys
import time
import zlib
from argparse import ArgumentTypeError
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import IO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.management.base import BaseCommand, CommandError

from allocations.imports import FORMATS, ChargeLoop, Counted, Reject, Tally, parse_items
from allocations.ingest import MAX_BATCH
from allocations.mapping import mappings_for
from allocations.models import Cluster
from allocations.parsers import ParseError, open_text
from allocations.parsers.base import GZIP_MAGIC

DEFAULT_BATCH = 5000
# A terminal gets its progress line redrawn at most this often (seconds).
REDRAW = 0.2
REJECT_COLUMNS = ("line", "job_id", "field", "reason")


def _batch_size(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= MAX_BATCH:
        raise ArgumentTypeError(f"{value!r} is not a number from 1 to {MAX_BATCH}")
    return int(value)


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ArgumentTypeError(f"{value!r} is not a time zone (e.g. Europe/Berlin)") from None
    return value


def _stdin_lines(binary: IO[bytes]) -> Iterator[str]:
    # open_text needs a seekable file; a pipe is not, so its gzip magic is peeked at.
    reader = binary if hasattr(binary, "peek") else io.BufferedReader(binary)
    compressed = reader.peek(2)[:2] == GZIP_MAGIC
    stream = gzip.GzipFile(fileobj=reader, mode="rb") if compressed else reader
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace")
    try:
        yield from text
    except EOFError as exc:
        raise ParseError(f"truncated gzip: {exc}", where="stdin") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise ParseError(f"corrupt gzip: {exc}", where="stdin") from exc
    finally:
        # Leaves the process's stdin open for whoever owns it.
        text.detach()


@contextmanager
def _input(path: str, stdin: IO[bytes] | None) -> Iterator[Iterator[str]]:
    if path == "-":
        yield _stdin_lines(stdin or sys.stdin.buffer)
        return
    with ExitStack() as stack:
        # Only opening is caught: an OSError while charging (the rejects file's disk
        # filling up) is not this file's.
        try:
            lines = stack.enter_context(open_text(path))
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
        yield lines


class Command(BaseCommand):
    help = (
        "Charges a scheduler accounting file (sacct --parsable2, a slurmrestd /slurmdb jobs "
        "response, or an SWF trace; gzipped or not; '-' reads stdin) to the allocations of "
        "--cluster. Each job's TRES become usage of the cluster's resources through the "
        "cluster's TresMapping rows. Jobs are posted in batches of --batch-size usage "
        "records, a job's records always in one batch, and EACH BATCH IS ALL OR NOTHING: a "
        "rejected batch charges nothing, its bad records are reported with their input line "
        "(for slurmrestd, the index in the jobs list), and the command goes on with the next "
        "batch. Lines that cannot be read or mapped are reported the same way and never block "
        "a batch. At the end it exits 1 naming how many lines were rejected and how many "
        "jobs of rejected batches went uncharged: fix the cause and run the same file again, "
        "since jobs already charged count as duplicates and are never charged twice. Steps, "
        "jobs not ended, jobs that never ran and earlier runs of requeued jobs are skipped, "
        "not rejected. SWF traces (Parallel Workloads Archive) name users u<id>, accounts "
        "g<group> and partitions q<queue>, and their TRES is cpu (processors): a site maps "
        "them by creating users and allocations with those names and a TresMapping for cpu."
    )
    # A binary stream read instead of sys.stdin when FILE is '-' (tests pass one).
    stealth_options = ("stdin",)

    def add_arguments(self, parser):
        parser.add_argument("file", metavar="FILE", help="The file to import; '-' for stdin.")
        parser.add_argument("--cluster", required=True, help="The cluster's name (e.g. gpu1).")
        parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
        parser.add_argument(
            "--tz",
            type=_zone,
            help="sacct only: the time zone sacct printed times in (default UTC, as with "
            "TZ=UTC sacct). slurmrestd and SWF times are epoch seconds.",
        )
        parser.add_argument(
            "--batch-size",
            type=_batch_size,
            default=DEFAULT_BATCH,
            help=f"Usage records per batch, 1 to {MAX_BATCH} (default {DEFAULT_BATCH}).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Check and count everything, batch by batch, then roll back: nothing is "
            "written. Batches do not see each other's charges.",
        )
        parser.add_argument(
            "--rejects",
            metavar="FILE.csv",
            help="Write every rejected line here as CSV: line,job_id,field,reason (a header "
            "only when nothing was rejected).",
        )

    def handle(self, *args, **options):
        path, fmt, tz = options["file"], options["fmt"], options["tz"]
        if tz and fmt != "sacct":
            raise CommandError(f"--tz is for sacct only: {fmt} times are epoch seconds (UTC).")
        cluster = Cluster.objects.filter(name=options["cluster"]).first()
        if cluster is None:
            raise CommandError(f"There is no cluster named {options['cluster']!r}.")
        mappings = mappings_for(cluster)
        if not mappings:
            raise CommandError(
                f"Cluster {cluster.name} has no TRES mappings, so no job can be charged; "
                "configure TresMapping in the admin."
            )
        run = _Import(
            self,
            cluster=cluster,
            mappings=mappings,
            fmt=fmt,
            batch_size=options["batch_size"],
            dry_run=options["dry_run"],
            show_progress=options["verbosity"] >= 1,
        )
        with ExitStack() as stack:
            if options["rejects"]:
                try:
                    out = stack.enter_context(open(options["rejects"], "w", newline=""))
                except OSError as exc:
                    raise CommandError(f"cannot write {options['rejects']}: {exc}") from None
                run.rejects = csv.writer(out)
                run.rejects.writerow(REJECT_COLUMNS)
            lines = Counted(stack.enter_context(_input(path, options.get("stdin"))))
            run.lines = lines
            try:
                run.charge(parse_items(fmt, lines, tz))
            except ParseError as exc:  # a broken file (truncated gzip), not a bad line
                run.summary("stdin" if path == "-" else path)
                raise CommandError(
                    f"{exc}: stopped after line {lines.count:,}. The batches posted before "
                    "were charged, the rest of the file was not; run the complete file "
                    "again: what was charged counts as duplicates."
                ) from None
        run.summary("stdin" if path == "-" else path)
        run.fail_on_rejects()


def _count(n: int, one: str = "line", many: str = "lines") -> str:
    return f"{n:,} {one if n == 1 else many}"


class _Import:
    """One run of the command: the sink of its ChargeLoop, which reports rejects and
    progress on the terminal (and rejects in the CSV)."""

    def __init__(self, command, *, cluster, mappings, fmt, batch_size, dry_run, show_progress):
        self.out, self.err = command.stdout, command.stderr
        self.cluster, self.fmt = cluster, fmt
        self.dry_run, self.show_progress = dry_run, show_progress
        self.tty = self.err.isatty()
        self.rejects = None
        self.lines: Counted | None = None
        self.began = self.drawn = time.monotonic()
        self.loop = ChargeLoop(
            cluster=cluster,
            mappings=mappings,
            fmt=fmt,
            batch_size=batch_size,
            sink=self,
            dry_run=dry_run,
        )

    def charge(self, items) -> None:
        self.loop.run(items)
        self._progress(final=True)

    @property
    def tally(self) -> Tally:
        # What was committed and, when a broken file stopped the loop, what was counted
        # after the last batch.
        tally = Tally()
        tally.add(self.loop.total)
        tally.add(self.loop.pending)
        return tally

    def reject(self, reject: Reject) -> None:
        about = f"job {reject.job_id}: " if reject.job_id else ""
        about += f"{reject.field}: " if reject.field else ""
        self._clear()
        self.err.write(f"{reject.where}: {about}{reject.reason}")
        if self.rejects is not None:
            line = "" if reject.line is None else reject.line
            self.rejects.writerow((line, reject.job_id, reject.field, reject.reason))

    def begin(self) -> None:
        pass

    def commit(self, *, checkpoint: int, tally: Tally, final: bool) -> None:
        pass

    def committed(self, *, accepted: bool | None) -> None:
        if accepted and self.show_progress and not self.tty:
            # Logs get a line per batch rather than a line redrawn in place.
            self.err.write(self._status(), style_func=str)

    def progress(self) -> None:
        self._progress()

    def _status(self) -> str:
        seconds = max(time.monotonic() - self.began, 1e-6)
        read = self.lines.count if self.lines else 0
        t = self.tally
        skipped = ", ".join(f"{reason} {n:,}" for reason, n in sorted(t.skipped.items()))
        return (
            f"{read:,} lines read, {t.jobs_charged:,} jobs charged "
            f"({t.usage_created:,} usage records new, {t.duplicates:,} duplicates, "
            f"{t.corrected:,} corrected), skipped {sum(t.skipped.values()):,}"
            f"{f' ({skipped})' if skipped else ''}, {t.rejected_lines:,} rejected, "
            f"{read / seconds:,.0f} lines/s"
        )

    def _clear(self) -> None:
        if self.show_progress and self.tty:
            self.err.write("\r\x1b[K", ending="", style_func=str)

    def _progress(self, *, final: bool = False) -> None:
        if not (self.show_progress and self.tty):
            return
        now = time.monotonic()
        if final or now - self.drawn >= REDRAW:
            self.drawn = now
            self.err.write(
                "\r\x1b[K" + self._status(), ending="\n" if final else "", style_func=str
            )
            self.err.flush()

    def summary(self, path: str) -> None:
        seconds = time.monotonic() - self.began
        read = self.lines.count if self.lines else 0
        verb = "Would charge" if self.dry_run else "Charged"
        write = self.out.write
        t = self.tally
        if self.dry_run:
            write("Dry run: nothing was written.")
        write(
            f"{path} ({self.fmt}) on cluster {self.cluster.name}: {read:,} lines read in "
            f"{seconds:.1f} s, {_count(t.batches, 'batch', 'batches')}."
        )
        write(
            f"{verb} {t.jobs_charged:,} jobs: {t.usage_created:,} usage records new, "
            f"{t.duplicates:,} duplicates, {t.corrected:,} corrected; "
            f"{t.su_charged} SU."
        )
        by_reason = ", ".join(f"{reason} {n:,}" for reason, n in sorted(t.skipped.items()))
        write(f"Skipped {_count(sum(t.skipped.values()))}{f': {by_reason}' if by_reason else ''}.")
        write(f"Rejected {_count(t.rejected_lines)}.")
        if t.uncharged_jobs:
            write(
                f"Not charged: {t.uncharged_jobs:,} jobs in rejected batches (a batch is "
                "all or nothing)."
            )

    def fail_on_rejects(self) -> None:
        t = self.tally
        if not t.rejected_lines:
            return
        uncharged = (
            f"; {t.uncharged_jobs:,} other jobs of rejected batches were not charged"
            if t.uncharged_jobs
            else ""
        )
        listed = "on stderr and in the rejects file" if self.rejects is not None else "on stderr"
        raise CommandError(
            f"{_count(t.rejected_lines)} rejected (listed {listed}){uncharged}. "
            "Fix them (users, allocations, members, rates, TRES mappings) and run the same "
            "file again: jobs already charged count as duplicates."
        )
