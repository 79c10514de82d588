"""Charging scheduler accounting files: the one loop behind the import_usage command and
background imports (UsageImport), and the life of a background import.

The loop (ChargeLoop) turns a parser's items into usage batches and charges each batch,
all or nothing, through ingest.usage_ingest. What happens around each batch is its sink's:
the command prints rejects and progress; a background import (_StoredRun) writes the
batch's rejects, counters and checkpoint in the batch's own transaction. So whatever
instant a worker dies at, the database holds either the whole batch with its
bookkeeping or none of it, and a new run resumes after the last committed batch by
skipping that many parser items (parsers are deterministic for a given file). A
duplicate charge is then impossible twice over: usage_record_batch counts a job charged
before as a duplicate anyway.

One runner at a time: a run claims the import with a conditional UPDATE (queued, or
running with a stale heartbeat) that stamps it with a fresh `runner` id, and every batch
locks the import row and checks the stamp before it charges. A runner that was taken
for dead and replaced finds another stamp there and stops without writing.

Lock order: the UsageImport row first, then what usage_record_batch locks (services.py).
"""

import enum
import gzip
import io
import json
import logging
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import timedelta
from decimal import Decimal
from typing import IO, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import ApiToken, User
from allocations.ingest import usage_ingest
from allocations.mapping import MappingError, mappings_for, usage_records
from allocations.models import Cluster, UsageImport, UsageImportReject
from allocations.parsers import (
    JobRecord,
    ParseError,
    Skipped,
    parse_sacct,
    parse_slurmrestd,
    parse_swf,
)
from allocations.parsers.base import GZIP_MAGIC, text_lines
from allocations.selectors import user_administers_cluster
from allocations.services import BatchRejected

logger = logging.getLogger(__name__)

FORMATS = tuple(UsageImport.Format.values)
State = UsageImport.State


def parse_items(fmt: str, lines: Iterable[str], tz: str | None):
    """The parser of `fmt` over `lines`: the same items, in the same order, every time."""
    if fmt == "sacct":
        return parse_sacct(lines, tz=tz or "UTC")
    if fmt == "swf":
        return parse_swf(lines)
    return parse_slurmrestd("".join(lines))


class Counted:
    """An iterator over lines that counts them, for progress; `on_line` is called after
    each line (a background import's heartbeat)."""

    def __init__(self, lines: Iterator[str], on_line: Callable[[], None] | None = None):
        self._lines = lines
        self._on_line = on_line
        self.count = 0

    def __iter__(self) -> "Counted":
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.count += 1
        if self._on_line is not None:
            self._on_line()
        return line


@dataclass
class Tally:
    batches: int = 0
    jobs_charged: int = 0
    usage_created: int = 0
    duplicates: int = 0
    corrected: int = 0
    rejected_lines: int = 0
    uncharged_jobs: int = 0
    su_charged: Decimal = Decimal(0)
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, other: "Tally") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True)
class Reject:
    line: int | None
    job_id: str
    field: str
    reason: str
    where: str  # "line 7", "jobs[3]", "document"


class Sink(Protocol):
    """What happens around the loop's batches (see the module docstring)."""

    def reject(self, reject: Reject) -> None: ...

    def begin(self) -> None:
        """First thing in a batch's transaction."""

    def commit(self, *, checkpoint: int, tally: Tally, final: bool) -> None:
        """Last thing in a batch's transaction: `checkpoint` items are handled once it
        commits; `tally` is what they add to the counters."""

    def committed(self, *, accepted: bool | None) -> None: ...

    def progress(self) -> None: ...


class ChargeLoop:
    """Charges a parser's items in batches of at most `batch_size` usage records, a job's
    records always in one batch. A batch's charge and everything counted since the
    previous batch are committed together (Sink.commit); `flush_every` also ends a batch
    after that many items, so a long run of skipped or rejected lines is committed too."""

    def __init__(
        self,
        *,
        cluster: Cluster,
        mappings,
        fmt: str,
        batch_size: int,
        sink: Sink,
        dry_run: bool = False,
        flush_every: int | None = None,
    ):
        self.cluster, self.mappings, self.fmt = cluster, mappings, fmt
        self.batch_size, self.sink, self.dry_run = batch_size, sink, dry_run
        self.flush_every = flush_every
        self.total = Tally()  # committed
        self.pending = Tally()  # since the last commit
        self._since = 0
        # The batch: records, and for each the job's input line (batch index -> line).
        self.batch: list[dict] = []
        self.origins: list[int] = []

    def run(self, items: Iterable, *, skip: int = 0) -> None:
        """Charges `items`, leaving out the first `skip` (committed by an earlier run)."""
        position = skip
        for index, item in enumerate(items):
            if index < skip:
                continue
            if isinstance(item, Skipped):
                self.pending.skipped[str(item.reason)] += 1
            elif isinstance(item, JobRecord):
                self._add(item, index)
            else:
                self._reject(item.line, "", "", item.reason, where=item.where)
            position = index + 1
            self._since += 1
            if self.flush_every and self._since >= self.flush_every:
                self._flush(position)
            self.sink.progress()
        self._flush(position, final=True)

    def where(self, line: int | None) -> str:
        if line is None:
            return "?"
        return f"jobs[{line}]" if self.fmt == "slurmrestd" else f"line {line}"

    def _add(self, job: JobRecord, index: int) -> None:
        try:
            records = usage_records(job, self.mappings)
        except MappingError as exc:
            self._reject(job.line, job.job_id, exc.field, str(exc))
            return
        if self.batch and len(self.batch) + len(records) > self.batch_size:
            # Everything before this job is in the batch or counted: it commits as handled.
            self._flush(index)
        self.batch.extend(records)
        self.origins.extend([job.line] * len(records))

    def _reject(self, line, job_id: str, field: str, reason: str, *, where=None, count=True):
        if count:
            self.pending.rejected_lines += 1
        self.sink.reject(Reject(line, job_id, field, reason, where or self.where(line)))

    def _flush(self, checkpoint: int, *, final: bool = False) -> None:
        batch, origins = self.batch, self.origins
        self.batch, self.origins = [], []
        pending = self.pending
        accepted = None
        with transaction.atomic():
            self.sink.begin()
            if batch:
                accepted = self._charge(batch, origins)
            self.sink.commit(checkpoint=checkpoint, tally=pending, final=final)
            if self.dry_run:
                transaction.set_rollback(True)
        self.total.add(pending)
        self.pending = Tally()
        self._since = 0
        self.sink.committed(accepted=accepted)

    def _charge(self, batch: list[dict], origins: list[int]) -> bool:
        pending = self.pending
        pending.batches += 1
        jobs = len(set(origins))
        try:
            # A savepoint: a rejected batch leaves the bookkeeping's transaction usable.
            with transaction.atomic():
                result = usage_ingest(cluster=self.cluster, records=batch)
        except BatchRejected as exc:
            bad: set[int] = set()
            reported: set[tuple] = set()
            for error in exc.errors:
                line = origins[error["index"]]
                key = (line, error["field"], error["message"])
                # A job's records share most faults (an unknown user): one report each.
                if key not in reported:
                    reported.add(key)
                    job_id = batch[error["index"]]["job_id"]
                    self._reject(line, job_id, error["field"], error["message"], count=False)
                bad.add(line)
            pending.rejected_lines += len(bad)
            pending.uncharged_jobs += jobs - len(bad)
            return False
        pending.jobs_charged += jobs
        pending.usage_created += result.created
        pending.duplicates += result.duplicates
        pending.corrected += result.corrected
        pending.su_charged += result.su_charged
        return True


# --- uploads ---------------------------------------------------------------------------


def _check_zone(tz: str) -> None:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError({"tz": f"{tz!r} is not a time zone (e.g. Europe/Berlin)."}) from None


def _binary(upload: IO[bytes]) -> IO[bytes]:
    upload.seek(0)
    compressed = upload.read(2) == GZIP_MAGIC
    upload.seek(0)
    return gzip.GzipFile(fileobj=upload, mode="rb") if compressed else upload


def _count_rows(upload: IO[bytes], fmt: str) -> int:
    """Reads the upload through once (gunzipping it) and counts the parser items it will
    give, refusing what no run could read: a truncated or corrupt gzip, binary data, a
    text too large, a sacct file without its header, slurmrestd output that is not JSON."""
    limit = settings.IMPORT_MAX_TEXT_BYTES
    too_large = ValidationError(
        {"file": f"The file's text is larger than {limit:,} bytes: split it (e.g. by day)."}
    )
    stream = _binary(upload)
    if fmt == "slurmrestd":
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise too_large
        if b"\x00" in data:
            raise ValidationError({"file": "This is not a text file (it holds binary data)."})
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise ValidationError({"file": f"This is not slurmrestd JSON: {exc}."}) from None
        if not isinstance(document, dict) or not isinstance(document.get("jobs"), list):
            raise ValidationError({"file": 'No "jobs" list: not a slurmdb jobs response.'})
        return len(document["jobs"]) + len(document.get("errors") or [])
    if b"\x00" in stream.read(64 * 1024):
        raise ValidationError({"file": "This is not a text file (it holds binary data)."})
    stream.seek(0)
    rows = size = 0
    header = fmt != "sacct"  # a sacct file's first line names its columns
    for number, line in enumerate(stream, start=1):
        size += len(line)
        if size > limit:
            raise too_large
        if b"\x00" in line:
            raise ValidationError(
                {"file": f"Line {number} holds binary data: this is not a text file."}
            )
        text = line.strip()
        if not text or (fmt == "swf" and text.startswith(b";")):
            continue
        if not header:
            header = True
            problem = next(iter(parse_sacct([text.decode("utf-8", "replace")])), None)
            if problem is not None:
                raise ValidationError({"file": str(problem)})
            continue
        rows += 1
    return rows


def _inspect(upload: UploadedFile, fmt: str) -> int:
    try:
        return _count_rows(getattr(upload, "file", upload), fmt)
    except EOFError:
        raise ValidationError(
            {
                "file": "The gzip file is truncated (it ends before its data does): upload the "
                "complete file."
            }
        ) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise ValidationError({"file": f"The gzip file is corrupt: {exc}."}) from None


def _require_importer(cluster: Cluster, actor: User | None, token: ApiToken | None) -> None:
    if token is not None:
        if token.cluster_id != cluster.pk:
            raise PermissionDenied("This token belongs to another cluster.")
    elif actor is None or not user_administers_cluster(user=actor, cluster=cluster):
        raise PermissionDenied(f"Only admins of {cluster.name} or its importer token may do this.")


@transaction.atomic
def usage_import_create(
    *,
    cluster: Cluster,
    fmt: str,
    upload: UploadedFile,
    tz: str = "",
    actor: User | None = None,
    token: ApiToken | None = None,
    batch_size: int | None = None,
) -> UsageImport:
    """Stores an accounting file and queues its import. The file is read through first,
    so a file no run could read is refused here and nothing is stored."""
    _require_importer(cluster, actor, token)
    if fmt not in FORMATS:
        raise ValidationError({"format": f"Choose one of {', '.join(FORMATS)}."})
    tz = (tz or "").strip()
    if tz:
        if fmt != "sacct":
            raise ValidationError({"tz": f"A time zone is for sacct only: {fmt} times are UTC."})
        _check_zone(tz)
    limit = settings.IMPORT_MAX_UPLOAD_BYTES
    if not upload.size:
        raise ValidationError({"file": "The file is empty."})
    if upload.size > limit:
        raise ValidationError(
            {"file": f"The file has {upload.size:,} bytes; at most {limit:,} may be uploaded."}
        )
    if not mappings_for(cluster):
        raise ValidationError(
            {
                "cluster": f"Cluster {cluster.name} has no TRES mappings, so no job can be "
                "charged; configure TresMapping in the admin."
            }
        )
    rows = _inspect(upload, fmt)
    usage_import = UsageImport(
        cluster=cluster,
        created_by=actor if token is None else None,
        token=token,
        format=fmt,
        tz=tz,
        original_name=(upload.name or "upload")[:255],
        size=upload.size,
        rows_total=rows,
        batch_size=batch_size or settings.IMPORT_BATCH_SIZE,
        heartbeat_at=timezone.now(),
    )
    upload.seek(0)
    usage_import.file.save(usage_import.original_name, upload, save=False)
    try:
        usage_import.save()
    except BaseException:
        usage_import.file.delete(save=False)
        raise
    _enqueue(usage_import)
    return usage_import


def _enqueue(usage_import: UsageImport) -> None:
    from allocations.tasks import run_usage_import_task

    run_usage_import_task.delay_on_commit(str(usage_import.code))


# --- runs --------------------------------------------------------------------------------


class Outcome(enum.StrEnum):
    DONE = "done"  # this run finished the import
    FAILED = "failed"  # this run stopped on an error, recorded on the import
    BUSY = "busy"  # another runner holds it (or it is not queued)
    LOST = "lost"  # taken over by another runner while this one ran
    PAUSED = "paused"  # out of time: queued again, to go on from its checkpoint


class _Lost(Exception):
    pass


class ImportNotResumable(ValidationError):
    """The import is done, or still has a live runner."""


class _Unreadable(Exception):
    pass


def _stale_before():
    return timezone.now() - timedelta(seconds=settings.IMPORT_STALE_SECONDS)


def _heartbeat_seconds() -> float:
    return min(30, max(1, settings.IMPORT_STALE_SECONDS // 10))


class _StoredRun:
    """The sink of a background import: rejects, counters and checkpoint go to the
    database in each batch's transaction."""

    def __init__(self, usage_import: UsageImport, runner: uuid.UUID):
        self.pk, self.runner = usage_import.pk, runner
        self.rejects: list[UsageImportReject] = []
        self.lines: Counted | None = None
        self.raw: IO[bytes] | None = None
        self.beat = time.monotonic()
        self.every = _heartbeat_seconds()

    def _position(self) -> dict:
        return {
            "bytes_read": self.raw.tell() if self.raw is not None else 0,
            "lines_read": self.lines.count if self.lines is not None else 0,
            "heartbeat_at": timezone.now(),
        }

    def reject(self, reject: Reject) -> None:
        self.rejects.append(
            UsageImportReject(
                usage_import_id=self.pk,
                line=reject.line,
                job_id=reject.job_id[:64],
                field=reject.field[:64],
                reason=reject.reason,
            )
        )

    def begin(self) -> None:
        # Waits for a takeover in progress, then refuses to write if it happened.
        runner = (
            UsageImport.objects.select_for_update()
            .filter(pk=self.pk)
            .values_list("runner", flat=True)
            .first()
        )
        if runner != self.runner:
            raise _Lost

    def commit(self, *, checkpoint: int, tally: Tally, final: bool) -> None:
        UsageImportReject.objects.bulk_create(self.rejects)
        self.rejects = []
        values = {
            **self._position(),
            "checkpoint": checkpoint,
            "jobs_charged": F("jobs_charged") + tally.jobs_charged,
            "usage_created": F("usage_created") + tally.usage_created,
            "duplicates": F("duplicates") + tally.duplicates,
            "corrected": F("corrected") + tally.corrected,
            "skipped": F("skipped") + sum(tally.skipped.values()),
            "rejected_lines": F("rejected_lines") + tally.rejected_lines,
            "uncharged_jobs": F("uncharged_jobs") + tally.uncharged_jobs,
            "su_charged": F("su_charged") + tally.su_charged,
        }
        if final:
            values |= {"state": State.DONE, "runner": None, "finished_at": timezone.now()}
        UsageImport.objects.filter(pk=self.pk).update(**values)
        self.beat = time.monotonic()

    def committed(self, *, accepted: bool | None) -> None:
        pass

    def progress(self) -> None:
        if time.monotonic() - self.beat < self.every:
            return
        self.beat = time.monotonic()
        # The sacct parser reads a whole file before its jobs come out: the heartbeat
        # (with the position) keeps the run from looking dead meanwhile.
        if not UsageImport.objects.filter(pk=self.pk, runner=self.runner).update(
            **self._position()
        ):
            raise _Lost


@contextmanager
def _open_stored(usage_import: UsageImport) -> Iterator[tuple[Iterator[str], IO[bytes]]]:
    try:
        stored = usage_import.file.storage.open(usage_import.file.name, "rb")
    except OSError as exc:
        raise _Unreadable(f"cannot read the stored file: {exc.strerror or exc}") from None
    raw = getattr(stored, "file", stored)
    try:
        binary = _binary(raw)
        with io.TextIOWrapper(binary, encoding="utf-8", errors="replace") as text:
            yield text_lines(text, usage_import.original_name), raw
    finally:
        stored.close()


def _claim(pk: int, runner: uuid.UUID, *, take_over: bool) -> bool:
    now = timezone.now()
    claimable = Q(state=State.QUEUED) | Q(state=State.RUNNING, heartbeat_at__lt=_stale_before())
    if take_over:
        claimable |= Q(state=State.RUNNING)
    claimed = UsageImport.objects.filter(claimable, pk=pk).update(
        state=State.RUNNING,
        runner=runner,
        attempts=F("attempts") + 1,
        started_at=now,
        heartbeat_at=now,
        resumed_from=F("checkpoint"),
        bytes_read=0,
        lines_read=0,
        error="",
    )
    return claimed == 1


def _end_run(pk: int, runner: uuid.UUID, **values) -> None:
    UsageImport.objects.filter(pk=pk, runner=runner).update(runner=None, **values)


def usage_import_run(*, code, take_over: bool = False) -> Outcome:
    """Runs (or resumes) the import from its checkpoint to the end, if it can claim it.

    take_over claims it even from a runner that still looks alive: for an operator who
    knows that runner's process is gone."""
    usage_import = UsageImport.objects.filter(code=code).first()
    if usage_import is None:
        return Outcome.BUSY
    runner = uuid.uuid4()
    if not _claim(usage_import.pk, runner, take_over=take_over):
        return Outcome.BUSY
    usage_import = UsageImport.objects.select_related("cluster").get(pk=usage_import.pk)
    try:
        _charge(usage_import, runner)
    except _Lost:
        logger.warning("import %s: taken over by another runner; stopped", usage_import.code)
        return Outcome.LOST
    except SoftTimeLimitExceeded:
        # The batch under way rolled back; the next task goes on from the checkpoint.
        _end_run(usage_import.pk, runner, state=State.QUEUED, heartbeat_at=timezone.now())
        return Outcome.PAUSED
    except (ParseError, _Unreadable) as exc:
        _fail(usage_import.pk, runner, f"{exc}. Charges up to the last checkpoint stand.")
        return Outcome.FAILED
    except Exception as exc:
        logger.exception("import %s failed", usage_import.code)
        _fail(usage_import.pk, runner, f"{type(exc).__name__}: {exc}")
        return Outcome.FAILED
    return Outcome.DONE


def _fail(pk: int, runner: uuid.UUID, message: str) -> None:
    _end_run(pk, runner, state=State.FAILED, error=message, finished_at=timezone.now())


def _charge(usage_import: UsageImport, runner: uuid.UUID) -> None:
    cluster = usage_import.cluster
    mappings = mappings_for(cluster)
    if not mappings:
        raise _Unreadable(
            f"cluster {cluster.name} has no TRES mappings; configure TresMapping in the admin"
        )
    sink = _StoredRun(usage_import, runner)
    with _open_stored(usage_import) as (lines, raw):
        sink.lines, sink.raw = Counted(lines, on_line=sink.progress), raw
        loop = ChargeLoop(
            cluster=cluster,
            mappings=mappings,
            fmt=usage_import.format,
            batch_size=usage_import.batch_size,
            sink=sink,
            flush_every=usage_import.batch_size,
        )
        items = parse_items(usage_import.format, sink.lines, usage_import.tz or None)
        loop.run(items, skip=usage_import.checkpoint)


def is_stale(usage_import: UsageImport) -> bool:
    return (
        usage_import.state in (State.QUEUED, State.RUNNING)
        and usage_import.heartbeat_at is not None
        and usage_import.heartbeat_at < _stale_before()
    )


def _requeue(pk: int) -> None:
    UsageImport.objects.filter(pk=pk).update(
        state=State.QUEUED, runner=None, finished_at=None, heartbeat_at=timezone.now()
    )


@transaction.atomic
def usage_import_resume(
    *, usage_import: UsageImport, actor: User | None = None, token: ApiToken | None = None
) -> UsageImport:
    """Queues a failed import again, or one whose runner stopped giving signs of life; it
    goes on from its checkpoint. actor and token are None for the scheduled sweep."""
    if actor is not None or token is not None:
        _require_importer(usage_import.cluster, actor, token)
    locked = UsageImport.objects.select_for_update().get(pk=usage_import.pk)
    if not (locked.state == State.FAILED or is_stale(locked)):
        raise ImportNotResumable(
            {
                "state": f"This import is {locked.state}: only a failed import, or one with "
                f"no sign of life for {settings.IMPORT_STALE_SECONDS} s, can be resumed."
            }
        )
    _requeue(locked.pk)
    _enqueue(locked)
    locked.refresh_from_db()
    return locked


def usage_import_files_purge(*, now=None) -> int:
    """Deletes the stored files of imports done more than IMPORT_FILE_RETENTION_DAYS ago:
    a site's accounting history would otherwise pile up in MEDIA_ROOT. The import's
    record, counters and rejects stay; only a done import loses its file (a failed one
    may still be resumed, and that re-reads it). Returns how many files went."""
    days = settings.IMPORT_FILE_RETENTION_DAYS
    if days <= 0:
        return 0
    before = (now or timezone.now()) - timedelta(days=days)
    due = UsageImport.objects.filter(state=State.DONE, finished_at__lt=before).exclude(file="")
    purged = 0
    for pk in due.values_list("pk", flat=True).iterator():
        with transaction.atomic():
            usage_import = UsageImport.objects.select_for_update().get(pk=pk)
            name = usage_import.file.name
            if usage_import.state != State.DONE or not name:
                continue
            storage = usage_import.file.storage
            UsageImport.objects.filter(pk=pk).update(file="")
            # The file goes once the record no longer names it; if the storage fails
            # then, an orphan file is left, never a record naming a missing file.
            transaction.on_commit(lambda s=storage, n=name: s.delete(n), robust=True)
        purged += 1
    if purged:
        logger.info("Deleted the files of %d finished usage imports", purged)
    return purged


def usage_imports_resume_stale() -> int:
    """Queues again every import whose runner (or queued task) seems lost."""
    stale = UsageImport.objects.filter(
        state__in=[State.QUEUED, State.RUNNING], heartbeat_at__lt=_stale_before()
    )
    count = 0
    for usage_import in stale.select_related("cluster"):
        try:
            usage_import_resume(usage_import=usage_import)
        except ImportNotResumable:
            continue  # it came back to life meanwhile
        count += 1
    return count
