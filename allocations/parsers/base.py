"""What every parser yields, and reading files.

A parser yields one item per input record: a JobRecord (chargeable), a Skipped (a record
that is not charged, with the reason) or a ParseError (a record that could not be read).
One bad line never aborts a file; only a broken file (a truncated gzip) raises.
"""

import enum
import gzip
import io
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from os import PathLike
from typing import Any

GZIP_MAGIC = b"\x1f\x8b"


class ParseError(Exception):
    """A record (or a whole input) that could not be read.

    `line` is the 1-based line number in a text input, or the 0-based index in a JSON
    list; `where` says which ("line 7", "jobs[3]", or a file name).
    """

    def __init__(self, reason: str, *, line: int | None = None, where: str | None = None):
        self.reason = reason
        self.line = line
        self.where = where if where is not None else (f"line {line}" if line is not None else "")
        super().__init__(f"{self.where}: {reason}" if self.where else reason)


class SkipReason(enum.StrEnum):
    STEP = "step"  # a job step (123.batch): the allocation line is charged instead
    NOT_ENDED = "not_ended"  # running, pending or requeued: not yet chargeable
    NEVER_RAN = "never_ran"  # no allocated resources (cancelled while pending)
    SUPERSEDED = "superseded"  # an earlier run of a requeued job: only the last is charged


@dataclass(frozen=True, slots=True)
class Skipped:
    line: int
    job_id: str
    reason: SkipReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One chargeable job, the same whichever scheduler output it came from.

    job_id is the unique id (sacct's JobIDRaw, slurmrestd's job_id); display_id is the one
    users see (123_4 for an array task, 123+0 for a het job component).
    """

    line: int
    job_id: str
    display_id: str
    user: str
    account: str
    partition: str
    state: str
    tres: dict[str, Decimal]
    elapsed_seconds: int
    start: datetime
    end: datetime | None
    cluster: str | None
    raw: dict[str, Any] = field(repr=False)


ParsedItem = JobRecord | Skipped | ParseError


@dataclass
class ParseResult:
    records: list[JobRecord] = field(default_factory=list)
    errors: list[ParseError] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def skipped_counts(self) -> Counter[SkipReason]:
        return Counter(item.reason for item in self.skipped)


# Sorts after every real time: a run that has not ended is the latest run of its job.
NOT_ENDED_YET = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Run:
    when: datetime
    line: int
    job_id: str
    item: JobRecord | Skipped | None  # None: an error, already yielded


class LatestRuns:
    """Keeps the last run of each job: schedulers list every run of a requeued job under
    one id (sacct -D, slurmrestd), and the portal charges a job id once.

    Runs are ranked by end time, a run that has not ended ranking last, then by position
    in the input. The winner is whatever its run is: a record, or a skip when the last run
    has not ended or never ran (so an earlier run is not charged while a later one is
    still going). Losers are reported as SUPERSEDED as soon as they lose; winners wait
    for finish(), which yields them in input order. Holds one small run per job.
    """

    def __init__(self) -> None:
        self._best: dict[tuple[str | None, str], _Run] = {}

    def offer(
        self, key: tuple[str | None, str], when: datetime, line: int, item: ParsedItem
    ) -> Iterator[ParsedItem]:
        if isinstance(item, ParseError):
            # Reported at once; as a run it still outranks earlier runs of its job.
            yield item
        run = _Run(when, line, key[1], None if isinstance(item, ParseError) else item)
        best = self._best.get(key)
        if best is None or (run.when, run.line) > (best.when, best.line):
            self._best[key] = run
            loser = best
        else:
            loser = run
        if loser is not None and loser.item is not None:
            detail = f"a later run of job {loser.job_id} is the one charged"
            yield Skipped(loser.line, loser.job_id, SkipReason.SUPERSEDED, detail)

    def finish(self) -> Iterator[JobRecord | Skipped]:
        for run in sorted(self._best.values(), key=lambda run: run.line):
            if run.item is not None:
                yield run.item
        self._best.clear()


def collect(items: Iterable[ParsedItem]) -> ParseResult:
    """Sorts a parser's items into records, errors and skips (in memory: for small inputs)."""
    result = ParseResult()
    for item in items:
        if isinstance(item, JobRecord):
            result.records.append(item)
        elif isinstance(item, Skipped):
            result.skipped.append(item)
        else:
            result.errors.append(item)
    return result


@contextmanager
def open_text(path: str | PathLike[str]) -> Iterator[Iterator[str]]:
    """Opens a text file, gunzipping it if it starts with the gzip magic bytes (whatever its
    name), and yields an iterator over its lines, read lazily.

    A truncated or corrupt gzip raises ParseError naming the file when the reader gets
    there, rather than ending early as if the file were complete.
    """
    with open(path, "rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        binary = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        # Undecodable bytes come from free-text columns (job names); replacing them keeps
        # one odd line from aborting the whole file.
        with io.TextIOWrapper(binary, encoding="utf-8", errors="replace") as text:
            yield text_lines(text, str(path))


def text_lines(text: Iterable[str], name: str) -> Iterator[str]:
    """The lines of `text` (a text stream, perhaps over a gzip), with a truncated or corrupt
    gzip raised as a ParseError naming `name`."""
    try:
        yield from text
    except EOFError as exc:
        raise ParseError(f"truncated gzip: {exc}", where=name) from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise ParseError(f"corrupt gzip: {exc}", where=name) from exc
